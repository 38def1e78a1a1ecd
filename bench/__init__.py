"""The benchmark: distmnist against Keras, the tutorial's loop, JAX and PyTorch, on this machine (`python -m bench`
from the checkout, or `make bench`). A tool on top of the library, as nanoGPT's bench.py is: it imports the library
(distmnist), nothing of the library imports it, and neither the wheel nor the container image holds it."""

import os

# The checkout: the folder that holds bench/ and distmnist/. The bench's processes of their own start there, so that
# `python -m bench.solo` and `python -m distmnist.train` run this checkout's code wherever the bench was started.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

"""The benchmark: distmnist against Keras, the tutorial's loop and JAX, on this machine (`python -m
distmnist.bench`). A tool on top of the library, as nanoGPT's bench.py is: it imports the library, and nothing
of the library imports it."""

"""MNIST: loading it from the first source that works (dataset.py), the offline mirror (mirror.py), and any picture
made MNIST-like (digits.py). `python -m distmnist.data` fetches and verifies it."""

"""distmnist: the classic MNIST MLP (784-512-256-10, ReLU, MSE, plain SGD) trained with tf.distribute."""

import os

# TensorFlow prints CUDA probing noise at import on machines without a GPU; this must be set before the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

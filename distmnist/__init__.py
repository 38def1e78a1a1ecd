"""distmnist: the classic MNIST MLP (784-512-256-10, ReLU, MSE, plain SGD) trained with tf.distribute."""

import os
import time

STARTED = time.perf_counter()  # when distmnist was first imported: the start of a run's timings

# TensorFlow's C++ runtime logs INFO and WARNING lines (CUDA probing, XLA) that are not for users; a level the
# user set wins. Must be set before TensorFlow is imported. The doctor lowers it to see every reason.
LOG_LEVEL_SET_BY_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# numpy asks the kernel for huge pages for every array of 4 MB or more. Where the kernel then compacts memory to
# find them (transparent_hugepage/defrag "madvise", Ubuntu's default), the first large arrays after TensorFlow's
# import stall, loading MNIST and making the trainer among them (docs/performance.md). Read when numpy is first
# imported; a setting the user made wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

__version__ = "0.1.0"

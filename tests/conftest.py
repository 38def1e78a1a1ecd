"""Shared test set-up: four logical CPUs for multi-replica tests, tiny MNIST-shaped data, and the `gpu` marker.

The in-process tests run on the CPU whatever the machine has: GPUs are hidden from this process before any op
runs, and from every process the tests start through CUDA_VISIBLE_DEVICES (see helpers). Tests marked `gpu` run
their own processes with the GPUs visible, and are skipped where there is none."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from distmnist.data import Mnist  # noqa: E402
from helpers import hide_gpus_from_subprocesses  # noqa: E402

# Split the CPU before any op runs, so tests can build 1-, 2- and 4-replica MirroredStrategies in one process.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 4)
GPUS = tf.config.list_physical_devices("GPU")  # physical: hiding them below does not change this list
tf.config.set_visible_devices([], "GPU")
hide_gpus_from_subprocesses()


def pytest_collection_modifyitems(config, items):
    if GPUS:
        return
    skip = pytest.mark.skip(reason="needs a GPU that TensorFlow can use (python -m distmnist.doctor)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_tiny_mnist(num_train: int = 512, num_test: int = 100, seed: int = 0) -> Mnist:
    """Learnable MNIST-shaped data: each class is a fixed random template plus noise, uint8 [N, 28, 28]."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28))

    def split(n):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.integers(-60, 61, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.uint8)

    (x_train, y_train), (x_test, y_test) = split(num_train), split(num_test)
    return Mnist(x_train, y_train, x_test, y_test, source="tiny synthetic")


@pytest.fixture(autouse=True)
def collect_garbage():
    """Collect each test's TensorFlow objects when it ends: tf.data iterators left uncollected keep prefetching
    on their own threads and slow the tests after them, and a single collection at the end of the session (pytest
    makes one) took a minute (all tests: 7 min 36 s of tests plus 63 s at exit, before this)."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def tiny_mnist() -> Mnist:
    return make_tiny_mnist()


@pytest.fixture
def tiny_npz_dir(tmp_path, tiny_mnist) -> str:
    np.savez_compressed(tmp_path / "mnist.npz", **tiny_mnist.arrays())
    return str(tmp_path)

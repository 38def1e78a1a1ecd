"""Shared test set-up: four logical CPUs for multi-replica tests, tiny MNIST-shaped data, and the `gpu` marker.

The in-process tests run on the CPU whatever the machine has: GPUs are hidden from this process before any op
runs, and from every process the tests start through CUDA_VISIBLE_DEVICES (see helpers). Tests marked `gpu` run
their own processes with the GPUs visible, and are skipped where there is none."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from distmnist.environment import xlaflags  # noqa: E402

xlaflags.configure()  # the XLA options distmnist's entry points run with

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from distmnist.data.dataset import Mnist  # noqa: E402
from helpers import hide_gpus_from_subprocesses, make_tiny_mnist  # noqa: E402

# Split the CPU before any op runs, so tests can build 1-, 2- and 4-replica MirroredStrategies in one process.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 4)
GPUS = tf.config.list_physical_devices("GPU")  # physical: hiding them below does not change this list
tf.config.set_visible_devices([], "GPU")
hide_gpus_from_subprocesses()
# What is alive now (TensorFlow's and the other modules' objects) lives for the whole session: out of the
# collector's sight, so that the collection after each test walks only what tests made (0.24 s a test before).
gc.freeze()


def pytest_collection_modifyitems(config, items):
    if GPUS:
        return
    skip = pytest.mark.skip(reason="needs a GPU that TensorFlow can use (python -m distmnist.doctor)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def collect_garbage():
    """Collect each test's TensorFlow objects when it ends: tf.data iterators left uncollected keep prefetching
    on their own threads and slow the tests after them, and a single collection at the end of the session (pytest
    makes one) took a minute (all tests: 7 min 36 s of tests plus 63 s at exit, before this). What outlives the
    collection (modules imported, the module fixtures' data, TensorFlow's caches) is frozen with the rest, so
    that each collection walks only what its own test made: otherwise they grew with the session, to 0.3 s each
    by its end. No module fixture holds a trainer or a tf.data iterator, which would then never be collected."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def tiny_mnist() -> Mnist:
    return make_tiny_mnist()


@pytest.fixture
def tiny_npz_dir(tmp_path, tiny_mnist) -> str:
    np.savez_compressed(tmp_path / "mnist.npz", **tiny_mnist.arrays())
    return str(tmp_path)

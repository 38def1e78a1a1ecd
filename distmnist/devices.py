"""The GPUs a process uses and how it takes their memory, set before TensorFlow initialises them.

TensorFlow maps nearly all memory of every visible GPU when it first uses one, so several processes on one host
(a local cluster, a notebook beside a run) would fight over it: this process sees only the GPUs it trains on
(`--num_gpus=k`: the first k) and grows its memory as it needs it. TF_FORCE_GPU_ALLOW_GROWTH, when a user sets
it, overrides the flag, as it does in TensorFlow itself.
"""

import os
import shutil

import tensorflow as tf
from absl import logging


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (so TensorFlow ought to see GPUs), without asking TensorFlow."""
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def configure_gpus(num_gpus=None, memory_growth: bool = True) -> list:
    """Makes only the first num_gpus GPUs visible (None: all) with memory growth as asked; returns their names
    ("/gpu:0", ...). Once TensorFlow has initialised its GPUs nothing can change: that is said, not raised."""
    gpus = tf.config.list_physical_devices("GPU")
    wanted = gpus if num_gpus is None else gpus[:num_gpus]
    try:
        if len(wanted) < len(gpus):
            tf.config.set_visible_devices(wanted, "GPU")
        if "TF_FORCE_GPU_ALLOW_GROWTH" not in os.environ:
            for gpu in wanted:
                tf.config.experimental.set_memory_growth(gpu, memory_growth)
    except RuntimeError:
        logging.warning("TensorFlow has initialised its GPUs already: --num_gpus visibility and memory growth "
                        "are as they were")
    return [f"/gpu:{i}" for i in range(len(wanted))]

"""Importing TensorFlow without the banners it prints on every start: start-up plumbing for the entry points.

TensorFlow's C++ runtime writes these lines to file descriptor 2 before its logging is set up, so
TF_CPP_MIN_LOG_LEVEL does not silence them all: CUDA probing on machines without a GPU, the CPU-feature note,
and on Intel CPUs with AVX-512 the oneDNN banner (twice). We capture stderr while TensorFlow imports and probes
its devices (logfilters.capturing_stderr), then replay every line except the known ones, so a user's error
message is not buried in them. The dropped lines are kept in `logfilters.captured`: the CUDA ones say why no GPU
was registered, and `python -m distmnist.doctor` reports them when a GPU was expected.
"""

import importlib.abc
import sys
import types
from collections.abc import Sequence
from typing import Any

from distmnist.common.logfilters import capturing_stderr
from distmnist.environment import xlaflags


class _KerasLater(importlib.abc.MetaPathFinder):
    """TensorFlow's __init__ imports Keras eagerly, inside `try: ... except ImportError: pass`, only so that
    Keras's optimizers are registered for SavedModels that hold them: about a third of the import's time
    (docs/performance.md; Keras imports matplotlib.pyplot, among much else). distmnist's training, export and
    prediction use no Keras. While this finder is on sys.meta_path Keras's implementation cannot be imported;
    nothing of Keras is left half imported, and tf.keras still works afterwards (imported on first use)."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None) -> None:
        if name == "keras.src" or name.startswith("keras.src."):
            raise ImportError(f"{name} is imported on first use, not with TensorFlow")
        return None


def import_tensorflow(replay: bool = True) -> Any:
    """Imports TensorFlow (Keras left for its first use, XLA's CPU options set: xlaflags.py) and lists its devices
    with the start-up banners filtered out; returns the module."""
    xlaflags.configure()
    later = _KerasLater()
    with capturing_stderr(replay):
        sys.meta_path.insert(0, later)
        try:
            import tensorflow as tf
        finally:
            sys.meta_path.remove(later)
        tf.config.list_physical_devices()
        tf.get_logger().setLevel("WARNING")  # tf.distribute narrates device placement at INFO
    return tf

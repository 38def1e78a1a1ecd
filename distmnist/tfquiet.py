"""Importing TensorFlow without the banners it prints on every start.

TensorFlow's C++ runtime writes these lines to file descriptor 2 before its logging is set up, so
TF_CPP_MIN_LOG_LEVEL does not silence them all: CUDA probing on machines without a GPU, the CPU-feature note,
and on Intel CPUs with AVX-512 the oneDNN banner (twice). We capture stderr while TensorFlow imports and probes
its devices, then replay every line except the known ones, so a user's error message is not buried in them.
The dropped lines are kept in `captured`: the CUDA ones say why no GPU was registered, and
`python -m distmnist.doctor` reports them when a GPU was expected.
"""

import contextlib
import importlib.abc
import logging as std_logging
import os
import sys
import tempfile

from absl import logging

from distmnist import xlaflags

_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "oneDNN custom operations are on",
)
captured = []  # every line TensorFlow printed while stderr was captured, the dropped ones included


@contextlib.contextmanager
def capturing_stderr(replay: bool = True):
    """Captures file descriptor 2 (where TensorFlow's C++ runtime writes) into `captured`; at the end, replays
    the lines that are not known noise to stderr, or none when replay is False."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                captured.append(line.rstrip("\n"))
                if replay and not any(noise in line for noise in _NOISE):
                    sys.stderr.write(line)


class _KerasLater(importlib.abc.MetaPathFinder):
    """TensorFlow's __init__ imports Keras eagerly, inside `try: ... except ImportError: pass`, only so that
    Keras's optimizers are registered for SavedModels that hold them: about a third of the import's time
    (docs/performance.md; Keras imports matplotlib.pyplot, among much else). distmnist's training, export and
    prediction use no Keras. While this finder is on sys.meta_path Keras's implementation cannot be imported;
    nothing of Keras is left half imported, and tf.keras still works afterwards (imported on first use)."""

    def find_spec(self, name, path=None, target=None):
        if name == "keras.src" or name.startswith("keras.src."):
            raise ImportError(f"{name} is imported on first use, not with TensorFlow")
        return None


def import_tensorflow(replay: bool = True):
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


class _CheckpointNarration(std_logging.Filter):
    """TensorFlow's checkpoint writer thread narrates each save at INFO ("Starting async checkpoint save ...",
    the sharding callback's duration); its warnings and errors pass."""

    FILES = ("async_checkpoint_helper.py", "functional_saver.py")  # the modules that log through absl

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or record.filename not in self.FILES


_checkpoint_narration = _CheckpointNarration()


def quiet_checkpoint_writer() -> None:
    """Drops the INFO lines of TensorFlow's checkpointing, from whichever thread (idempotent)."""
    logging.get_absl_logger().addFilter(_checkpoint_narration)


@contextlib.contextmanager
def absl_warnings_only():
    """TensorFlow narrates saving a SavedModel (every file) through absl at INFO."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)

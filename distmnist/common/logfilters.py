"""Filters for what TensorFlow prints, for any module that makes it talk: TensorFlow's C++ lines on file
descriptor 2 captured (and replayed without the known banners), its checkpoint writer's and SavedModel writer's
INFO narration dropped. The start-up itself (importing TensorFlow quietly) is tfquiet.py's.
"""

import contextlib
import logging as std_logging
import os
import sys
import tempfile
from collections.abc import Iterator

from absl import logging

_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "oneDNN custom operations are on",
)
captured: list[str] = []  # every line TensorFlow printed while stderr was captured, the dropped ones included


@contextlib.contextmanager
def capturing_stderr(replay: bool = True) -> Iterator[None]:
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


class _CheckpointNarration(std_logging.Filter):
    """TensorFlow's checkpoint writer thread narrates each save at INFO ("Starting async checkpoint save ...",
    the sharding callback's duration); its warnings and errors pass."""

    FILES = ("async_checkpoint_helper.py", "functional_saver.py")  # the modules that log through absl

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or record.filename not in self.FILES


_checkpoint_narration = _CheckpointNarration()


def quiet_checkpoint_writer() -> None:
    """Drops the INFO lines of TensorFlow's checkpointing, from whichever thread (idempotent)."""
    logging.get_absl_logger().addFilter(_checkpoint_narration)


@contextlib.contextmanager
def absl_warnings_only() -> Iterator[None]:
    """TensorFlow narrates saving a SavedModel (every file) through absl at INFO."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)

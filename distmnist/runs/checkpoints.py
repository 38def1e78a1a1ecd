"""Checkpoints of a run: the model and the step, every checkpoint_every steps and at the end, with the logged
history beside them, so that the same command resumes exactly where the last checkpoint left off.

The input position is not stored: both input paths derive it from the seed and the step (Trainer.resume_at).
tf.train.CheckpointManager records a checkpoint as the latest only after all its files are written, so a
checkpoint cut short by a crash is never picked up; a latest one that cannot be read is reported and the one
before it used.

Saving is TensorFlow's asynchronous checkpointing: save() copies the variables (2 MB) and returns, a thread of
TensorFlow's writes the files and records them while the next training call runs. A save waits for the one
before it; wait() (and latest_step, close) waits for the last one and reports a write that failed.
"""

import json
import os
import shutil
import tempfile
import time
from typing import Optional

import tensorflow as tf
from absl import logging

from distmnist.common import files, logfilters, safeio
from distmnist.common.errors import RunFailed, UserError
from distmnist.runs import rundir
from distmnist.training.trainer import Trainer

HISTORY = "history.json"


class Checkpointer:
    """Saves and restores one trainer's model and step under <run_dir>/checkpoints."""

    def __init__(self, trainer: Trainer, run_dir: Optional[str], keep: int):
        # Workers other than the chief must take part in saving but keep nothing: a temporary folder.
        self._scratch = None if run_dir else tempfile.mkdtemp(prefix="distmnist-ckpt-")
        self.directory = os.path.join(run_dir, "checkpoints") if run_dir else self._scratch
        self._same = f"the same command with --run_name={os.path.basename(run_dir)}" if run_dir else "the same command"
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        extra = {"loss_scale": trainer.loss_scale} if trainer.loss_scale else {}  # mixed_float16's state
        self._checkpoint = tf.train.Checkpoint(model=trainer.model, step=self._step, **extra)
        self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep=keep)
        self._options = tf.train.CheckpointOptions(enable_async=True)
        logfilters.quiet_checkpoint_writer()
        self._pending = None  # the step of a save not yet waited for
        self.seconds = 0.0  # what saving has cost the caller: the copies, and the waits for the writes

    def save(self, step: int, history: dict) -> None:
        """Writes the history first, then starts the checkpoint: a checkpoint never lacks the history up to it."""
        self.wait()  # times itself
        start = time.perf_counter()
        if not self._scratch:
            try:
                os.makedirs(self.directory, exist_ok=True)
                files.write_json(os.path.join(self.directory, HISTORY), history)
            except OSError as exc:
                raise self._failed(step, exc.strerror or str(exc)) from None
        self._step.assign(step)
        self._manager.save(checkpoint_number=step, options=self._options)
        self._pending = step
        self.seconds += time.perf_counter() - start

    def wait(self) -> None:
        """Returns when the last save is written and recorded; RunFailed when it could not be written."""
        if self._pending is None:
            return
        start = time.perf_counter()
        step, self._pending = self._pending, None
        self._manager.sync()
        self.seconds += time.perf_counter() - start
        if self._latest() != step:
            raise self._failed(step, _write_error(self._checkpoint))

    def _failed(self, step: int, why: str) -> RunFailed:
        return RunFailed(f"the checkpoint of step {step} could not be written to {self.directory}: {why}; free "
                         f"space or fix the folder's permissions, then run {self._same} to resume from the checkpoint "
                         "before it")

    @property
    def latest_step(self) -> Optional[int]:
        """The step of the newest complete checkpoint, None when there is none (a save in flight is waited for)."""
        self.wait()
        return self._latest()

    def _latest(self) -> Optional[int]:
        latest = self._manager.latest_checkpoint
        return int(latest.rpartition("-")[2]) if latest else None

    def restore_latest(self) -> int:
        """Restores the newest readable checkpoint and returns its step (0 when there is none)."""
        for path in reversed(self._manager.checkpoints):
            try:
                self._checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as exc:  # noqa: BLE001  a damaged file fails in many ways (OpError, IndexError, ...)
                logging.warning("checkpoint %s cannot be read (%s); trying the one before it", path, exc)
                continue
            return int(self._step.numpy())
        if self._manager.checkpoints:
            raise UserError(f"no checkpoint in {self.directory} can be read; start afresh with --overwrite")
        return 0

    def history(self, step: int) -> dict:
        """The logged values up to a restored step (what the killed run logged after it is dropped)."""
        path = os.path.join(self.directory, HISTORY)
        if not os.path.exists(path):
            return {"loss": [], "accuracy": []}
        try:
            return rundir.kept_history(json.loads(safeio.read_path(path, safeio.MAX_JSON_BYTES)), step)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise UserError(f"{path} is not a distmnist history ({type(exc).__name__}: {exc}); start afresh with "
                            "--overwrite") from None

    def close(self) -> None:
        """Waits for the last save, then removes a worker's scratch folder."""
        try:
            self.wait()
        finally:
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)


def _write_error(checkpoint: tf.train.Checkpoint) -> str:
    """The error TensorFlow's writer thread kept (taken, so that it is not raised again when the process exits)."""
    helper = getattr(checkpoint, "_async_checkpointer_impl", None)
    error = getattr(helper, "_async_error", None)
    if helper is not None:
        helper._async_error = None
    return (str(error).strip().splitlines() or [type(error).__name__])[0] if error else "no error was reported"

"""Checkpoints of a run: the model and the step, every checkpoint_every steps and at the end, with the logged
history beside them, so that the same command resumes exactly where the last checkpoint left off.

The input position is not stored: both input paths derive it from the seed and the step (Trainer.resume_at).
tf.train.CheckpointManager records a checkpoint as the latest only after all its files are written, so a
checkpoint cut short by a crash is never picked up; a latest one that cannot be read is reported and the one
before it used.
"""

import json
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf
from absl import logging

from distmnist import files, rundir, tfquiet
from distmnist.errors import UserError
from distmnist.loop import Trainer

HISTORY = "history.json"


class Checkpointer:
    """Saves and restores one trainer's model and step under <run_dir>/checkpoints."""

    def __init__(self, trainer: Trainer, run_dir: Optional[str], keep: int):
        # Workers other than the chief must take part in saving but keep nothing: a temporary folder.
        self._scratch = None if run_dir else tempfile.mkdtemp(prefix="distmnist-ckpt-")
        self.directory = os.path.join(run_dir, "checkpoints") if run_dir else self._scratch
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self._checkpoint = tf.train.Checkpoint(model=trainer.model, step=self._step)
        self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep=keep)

    def save(self, step: int, history: dict) -> str:
        """Writes the history first, then the checkpoint: a checkpoint never lacks the history up to it."""
        if not self._scratch:
            os.makedirs(self.directory, exist_ok=True)
            files.write_json(os.path.join(self.directory, HISTORY), history)
        self._step.assign(step)
        with tfquiet.absl_warnings_only():
            return self._manager.save(checkpoint_number=step)

    @property
    def latest_step(self) -> Optional[int]:
        """The step of the newest complete checkpoint, None when there is none."""
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
        with open(path) as f:
            return rundir.kept_history(json.load(f), step)

    def close(self) -> None:
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)

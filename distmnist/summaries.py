"""Writing what the loop reports: TensorBoard scalars, console lines in the tutorial's spirit, and the history
that the plots and run.json are drawn from."""

import glob
import os
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from distmnist.config import TrainConfig
from distmnist.loop import Reporter


# Logged at evaluations, which happen at a checkpoint's own step too; every other tag is a training step's.
EVALUATION_TAGS = ("accuracy",)


def drop_events_after(run_dir: str, step: int) -> int:
    """Rewrites a run's event files without what an interrupted run logged after its checkpoint at `step`
    (training steps from `step` on, evaluations after it), and without a record cut short by the kill, so a
    resumed run's TensorBoard curves have each step once. Returns the number of events dropped."""
    dropped = 0
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        kept, changed = [], False
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                limit = step + 1 if any(v.tag in EVALUATION_TAGS for v in event.summary.value) else step
                if event.summary.value and event.step >= limit:
                    dropped += 1
                    changed = True
                else:
                    kept.append(record.numpy())
        except tf.errors.DataLossError:
            changed = True  # a record cut short by the kill: drop it
        if changed:
            fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".tmp-resume-")
            os.close(fd)
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(tmp, path)
    return dropped


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{seconds:02d}"


class RunReporter(Reporter):
    """Scalars `loss`, `examples_per_sec`, `learning_rate` every log_every steps and `accuracy` at evaluations."""

    def __init__(self, run_dir: Optional[str], config: TrainConfig, total_steps: int, stream=None,
                 verbose: bool = True, history: Optional[dict] = None):
        """run_dir None: keep the history only (a cluster's non-chief workers); verbose False: no console;
        history: what a resumed run logged before (lists of [step, value] under "loss" and "accuracy")."""
        self.config = config
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.progress = verbose and self.stream.isatty()
        self.writer = tf.summary.create_file_writer(run_dir) if run_dir else tf.summary.create_noop_writer()
        self.loss_history = [tuple(p) for p in (history or {}).get("loss", [])]  # (step, loss)
        self.accuracy_history = [tuple(p) for p in (history or {}).get("accuracy", [])]  # (step, accuracy)
        self._started = time.perf_counter()

    def _say(self, line: str) -> None:
        if not self.verbose:
            return
        if self.progress:
            line = "\r\033[K" + line
        print(line, file=self.stream, flush=True)

    def losses(self, first_step: int, values: np.ndarray, examples_per_sec: float) -> None:
        every = self.config.log_every
        first_logged = -(-first_step // every) * every
        with self.writer.as_default():
            for step in range(first_logged, first_step + len(values), every):
                loss = float(values[step - first_step])
                self.loss_history.append((step, loss))
                tf.summary.scalar("loss", loss, step=step)
                tf.summary.scalar("examples_per_sec", examples_per_sec, step=step)
                tf.summary.scalar("learning_rate", self.config.learning_rate, step=step)
                self._say(f"step {step} loss: {loss:.4f}")
        if self.progress:
            self._draw_progress(first_step + len(values), examples_per_sec)

    def history(self) -> dict:
        return {"loss": self.loss_history, "accuracy": self.accuracy_history}

    def accuracy(self, step: int, value: float) -> None:
        self.accuracy_history.append((step, value))
        with self.writer.as_default():
            tf.summary.scalar("accuracy", value, step=step)
        self.writer.flush()
        self._say(f"step {step} Evaluate Acc: {value:.4f}")

    def _draw_progress(self, step: int, examples_per_sec: float) -> None:
        done = step / self.total_steps
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (1 - done) if done else 0.0
        bar = "#" * int(30 * done)
        print(f"\r\033[K[{bar:<30}] {step}/{self.total_steps} {examples_per_sec:,.0f} ex/s ETA {_format_duration(eta)}",
              end="", file=self.stream, flush=True)

    def close(self) -> None:
        self.writer.close()
        if self.progress:
            print("\r\033[K", end="", file=self.stream, flush=True)

"""Writing what the loop reports: TensorBoard scalars, console lines in the tutorial's spirit, and the history
that the plots and run.json are drawn from."""

import io
import sys
from typing import TextIO

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorboard.plugins.hparams import summary_v2 as hparams  # api would import Keras (its callback)
from tensorboard.plugins.image import metadata as image_metadata

from distmnist.common import progress
from distmnist.data import digits
from distmnist.training.controller import Reporter
from distmnist.training.model import MLP

MISTAKES_SHOWN = 24  # misclassified test digits in each evaluation's TensorBoard image


def png_image(name: str, png: bytes, step: int, description: str) -> None:
    """An image summary of one PNG as it is: what tf.summary.image writes ([width, height, PNG] for TensorBoard's
    Images dashboard) without decoding the picture and encoding it again."""
    width, height = Image.open(io.BytesIO(png)).size  # reads the header only
    tf.summary.write(
        name,
        tf.constant([str(width).encode(), str(height).encode(), png]),
        step=step,
        metadata=image_metadata.create_summary_metadata(display_name=None, description=description),
    )


def write_end_of_run(run_dir: str, step: int, png: bytes, description: str, scalars: dict) -> None:
    """What a run logs after the training loop's writer closed, through one writer: the reliability diagram as
    the `calibration` image and the end-of-run metrics as scalars."""
    writer = tf.summary.create_file_writer(run_dir)
    with writer.as_default():
        png_image("calibration", png, step, description)
        for tag, value in scalars.items():
            tf.summary.scalar(tag, value, step=step)
    writer.close()


class RunReporter(Reporter):
    """Scalars `loss`, `examples_per_sec`, `learning_rate` every log_every steps, `accuracy` and an image of
    misclassified test digits (`mistakes`) at evaluations; at the start of a run its config (its values of the
    experiment's HParams, and every setting in a text table) and the model's graph."""

    def __init__(
        self,
        run_dir: str | None,
        total_steps: int,
        learning_rate: float,
        stream: TextIO | None = None,
        verbose: bool = True,
        history: dict | None = None,
        test_set: tuple[np.ndarray, np.ndarray] | None = None,
        description: tuple | None = None,
    ) -> None:
        """run_dir None: keep the history only (a cluster's non-chief workers); verbose False: no console;
        history: what a resumed run logged before (lists of [step, value] under "loss" and "accuracy");
        test_set: (images, labels), for the pictures of mistakes; description: what a fresh run logs once,
        (run name, HParams values, config text)."""
        self.total_steps = total_steps
        self.learning_rate = learning_rate
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.bar = progress.Bar(total_steps, "training", self.stream, rate_unit="ex/s") if verbose else None
        self.writer = tf.summary.create_file_writer(run_dir) if run_dir else tf.summary.create_noop_writer()
        self.loss_history = [tuple(p) for p in (history or {}).get("loss", [])]  # (step, loss)
        self.accuracy_history = [tuple(p) for p in (history or {}).get("accuracy", [])]  # (step, accuracy)
        self.test_set = test_set
        self.run_dir = run_dir
        if run_dir and history is None and description:
            self._describe_run(*description)

    def _describe_run(self, run_name: str, hparam_values: dict, config_text: str) -> None:
        """What a fresh run logs once: its config for the HParams and Text dashboards, and the model's graph."""
        model = MLP()
        graph = tf.function(model, autograph=False).get_concrete_function(  # AutoGraph's first use is slow
            tf.TensorSpec([None, 784], tf.float32, name="features")
        )
        with self.writer.as_default():
            hparams.hparams(hparam_values, trial_id=run_name)
            tf.summary.text("config", config_text, step=0)
            tf.summary.graph(graph.graph)
        self.writer.flush()

    def _say(self, line: str) -> None:
        if self.bar:
            self.bar.say(line)

    def losses(self, logged: list, end_step: int, examples_per_sec: float) -> None:
        with self.writer.as_default():
            for step, loss in logged:
                self.loss_history.append((step, loss))
                tf.summary.scalar("loss", loss, step=step)
                tf.summary.scalar("examples_per_sec", examples_per_sec, step=step)
                tf.summary.scalar("learning_rate", self.learning_rate, step=step)
                self._say(f"step {step} loss: {loss:.4f}")
        if self.bar:
            self.bar.update(end_step, examples_per_sec)

    def loss_scale(self, step: int, state: dict) -> None:
        with self.writer.as_default():
            tf.summary.scalar("loss_scale", state["loss_scale"], step=step)
            tf.summary.scalar("skipped_steps", state["skipped_steps"], step=step)

    def history(self) -> dict:
        return {"loss": self.loss_history, "accuracy": self.accuracy_history}

    def accuracy(self, step: int, value: float) -> None:
        self.accuracy_history.append((step, value))
        with self.writer.as_default():
            tf.summary.scalar("accuracy", value, step=step)
        self.writer.flush()
        self._say(f"step {step} Evaluate Acc: {value:.4f}")

    def predictions(self, step: int, classes: np.ndarray) -> None:
        if self.test_set is None or self.run_dir is None:
            return
        x, y = self.test_set
        wrong = np.flatnonzero((classes >= 0) & (classes != y))[:MISTAKES_SHOWN]
        if not wrong.size:
            return
        png = digits.grid_png(x[wrong], [f"{classes[i]} (true {y[i]})" for i in wrong], columns=8, scale=2)
        with self.writer.as_default():
            png_image("mistakes", png, step, "test digits the model got wrong: predicted (true)")

    def close(self) -> None:
        self.writer.close()
        if self.bar:
            self.bar.close()

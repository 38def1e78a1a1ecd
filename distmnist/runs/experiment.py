"""What runs are compared on in TensorBoard's HParams dashboard: the settings that change what is learned or how
fast (with their types, and their domains where they are known), and the metrics.

Every run logs its values of these settings as a session (summaries.RunReporter) and the metrics as scalars;
every other setting stays in the run's config text (the Text dashboard), not in the HParams table. A sweep
declares the experiment (hparams_config) once in its logdir, in events at the logdir's top: the types, domains,
metrics with their names, and the swept settings marked as differing, which is what the dashboard sorts and
colours by. Single runs sharing a logdir declare nothing: a declaration written by the first run could not know
what later runs change, and without one TensorBoard infers the types, and which settings differ, from the runs'
values.
"""

import dataclasses
import math
import os
from collections.abc import Collection, Iterable

import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp  # hparams.api would import Keras (its callback)

from distmnist.common import files
from distmnist.common.config import INPUTS, PRECISIONS, STRATEGIES, TrainConfig

INT = hp.IntInterval(0, 2**31 - 1)

HPARAMS = (
    hp.HParam("learning_rate", hp.RealInterval(0.0, 1e6), description="plain SGD learning rate"),
    hp.HParam("batch_size", INT, description="examples per replica per step"),
    hp.HParam("global_batch_size", INT, description="examples per step over every replica"),
    hp.HParam("epochs", INT, description="passes over the training set (unless max_steps > 0)"),
    hp.HParam("max_steps", INT, description="steps instead of epochs when > 0"),
    hp.HParam("seed", INT, description="initialisation and shuffling"),
    hp.HParam("replicas", INT, description="replicas in sync (devices, over every worker)"),
    hp.HParam("strategy", hp.Discrete(list(STRATEGIES)), description="--strategy as given"),
    hp.HParam("input", hp.Discrete(list(INPUTS)), description="device-resident data or the tf.data pipeline"),
    hp.HParam("steps_per_loop", INT, description="training steps per compiled call"),
    hp.HParam("xla", hp.Discrete([False, True]), description="XLA compilation (resolved)"),
    hp.HParam("precision", hp.Discrete(list(PRECISIONS)), description="float32, or mixed with bfloat16 or float16"),
)

# (tag, display name, description): scalars every run writes; the HParams table shows each one's last value.
METRICS = (
    ("accuracy", "test accuracy", "test-set accuracy at the last evaluation"),
    ("loss", "training loss", "the last logged training loss (MSE)"),
    ("examples_per_sec", "examples/s", "training throughput at the last logged step"),
    ("run/wall_time_s", "wall time (s)", "seconds from set-up to the written artifacts"),
    (
        "run/calibration_ece",
        "calibration error",
        "expected calibration error of the exported probabilities on the test set",
    ),
)

MARKER = "experiment.txt"  # in the logdir: says the experiment is declared there
MARKER_TEXT = "distmnist's HParams experiment is declared in this folder's events (distmnist/experiment.py)\n"


def values(config: TrainConfig, num_replicas: int, xla: bool) -> dict:
    """This run's values of HPARAMS (xla: as the run resolved it)."""
    return {
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "global_batch_size": config.batch_size * num_replicas,
        "epochs": config.epochs,
        "max_steps": config.max_steps,
        "seed": config.seed,
        "replicas": num_replicas,
        "strategy": config.strategy,
        "input": config.input,
        "steps_per_loop": config.steps_per_loop,
        "xla": xla,
        "precision": config.precision,
    }


def _claim(marker: str) -> bool:
    """Creates the marker; False when it exists (on a local disk atomically: runs of a sweep start together)."""
    if files.is_url(marker):
        if tf.io.gfile.exists(marker):
            return False
        with tf.io.gfile.GFile(marker, "w") as f:
            f.write(MARKER_TEXT)
        return True
    try:
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as f:
        f.write(MARKER_TEXT)
    return True


def declare(logdir: str, differs: Collection[str] = ()) -> bool:
    """Writes the experiment (hparams and metrics; the hparams named in `differs` marked as differing) into
    `logdir` unless it is declared there already; returns whether it wrote it."""
    tf.io.gfile.makedirs(logdir)
    if not _claim(f"{logdir.rstrip('/')}/{MARKER}"):
        return False
    summary = hp.hparams_config_pb(
        hparams=list(HPARAMS),
        metrics=[hp.Metric(tag, display_name=name, description=text) for tag, name, text in METRICS],
    )
    plugin_data = summary.value[0].metadata.plugin_data
    content = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in differs
    plugin_data.content = content.SerializeToString()
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
    writer.close()
    return True


def differing(configs: Iterable[TrainConfig]) -> list:
    """The HPARAMS whose values differ among these configs (a sweep's points; the replica count and XLA stand for
    the settings that decide them, which are known before TensorFlow sees the devices: XLA's are those
    devices.resolve_xla takes from the config, beside the devices' support, which is the same for every point)."""
    seen = [
        values(c, num_replicas=1, xla=False)
        | {
            "replicas": (c.strategy, c.num_gpus, c.cpu_replicas),
            "global_batch_size": (c.batch_size, c.num_gpus, c.cpu_replicas),
            "xla": (c.jit_compile, c.input, c.precision),
        }
        for c in configs
    ]
    return sorted(name for name in seen[0] if len({repr(v[name]) for v in seen}) > 1) if seen else []


def final_scalars(wall_time_s: float, calibration_ece: float | None) -> dict:
    """The end-of-run metrics a run writes once (its other metrics are scalars it logs as it trains)."""
    scalars = {"run/wall_time_s": wall_time_s}
    if calibration_ece is not None and math.isfinite(calibration_ece):
        scalars["run/calibration_ece"] = calibration_ece
    return scalars


def config_table(config: TrainConfig) -> str:
    """The run's settings as a Markdown table (TensorBoard's Text dashboard renders it)."""
    rows = [f"| `--{name}` | `{value}` |" for name, value in dataclasses.asdict(config).items()]
    return "\n".join(["| flag | value |", "|---|---|", *rows])

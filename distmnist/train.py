"""Train the MNIST MLP with tf.distribute and export plots, TensorBoard events and a SavedModel.

python -m distmnist.train                    # every visible GPU, else the CPU
python -m distmnist.train --num_gpus=2       # MirroredStrategy over two GPUs
python -m distmnist.train --cpu_replicas=2   # the distributed path on two logical CPUs
launch/local_cluster.sh 2 -- [flags]         # two workers on this machine (MultiWorkerMirroredStrategy)
"""

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

from absl import flags

import distmnist
from distmnist.common import cli, files
from distmnist.common.config import TrainConfig, field_descriptions, with_run_name
from distmnist.common.errors import OutOfRoom, UserError
from distmnist.environment import tfquiet, vertex
from distmnist.runs import outputs, runclaim, rundir
from distmnist.runs.painter import Painter
from distmnist.training import cluster as cluster_lib


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One flag per TrainConfig field, its help and default taken from the field."""
    for name, default, kind, help_text, _, choices in field_descriptions():
        text = help_text.replace("`", "").replace("**", "")
        if choices:
            flags.DEFINE_enum(name, default, choices, text, flag_values=flag_values)
        elif kind in (bool, bool | None):
            flags.DEFINE_boolean(name, default, text, flag_values=flag_values)
        elif kind in (int, int | None):
            flags.DEFINE_integer(name, default, text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, text, flag_values=flag_values)


FLAGS = flags.FLAGS


def config_from_flags() -> TrainConfig:
    """The validated config (UserError naming the first bad value), before TensorFlow is imported."""
    values: dict[str, Any] = {name: FLAGS[name].value for name, *_ in field_descriptions()}
    return TrainConfig(**values)


def main() -> None:
    # Before TensorFlow is imported: bad flags fail in a blink. Vertex AI's AIP_* folders fill what was not given.
    config = vertex.from_environment(config_from_flags(), os.environ)
    # The cluster (TF_CONFIG, or a Kubeflow pod's JobSet names; a bad one, or a task with no role here, is one line)
    # and the run's name, each decided once, here, and passed on.
    cluster = cluster_lib.from_environment(config.strategy, os.environ)
    config = with_run_name(config)
    run_name = config.run_name
    assert run_name is not None  # with_run_name named it
    chief = cluster is None or cluster.is_chief
    claim_path = runclaim.claim_path(config.logdir, run_name)
    with _no_room_is_one_line(claim_path):
        if chief:
            outputs.check(config)  # every output, before anything is written
        # One writer per run: the chief claims the run directory before anything is written (runclaim.py).
        claim = runclaim.take(config.logdir, run_name) if chief and "://" not in config.logdir else None
    try:
        if chief:  # the run directory's plan, made again in set_up: a directory that cannot be used fails here
            with _no_room_is_one_line(claim_path):
                rundir.plan(config.logdir, run_name, dataclasses.asdict(config))
        _train(config, claim, cluster)
    except UserError:
        if claim:
            claim.abandon()  # a run that failed its checks leaves nothing behind, its claim included
        raise
    finally:
        if claim:  # on every way out (a stop, a divergence too): a lease would otherwise look held for a minute
            claim.release()


@contextlib.contextmanager
def _no_room_is_one_line(claim_path: str) -> Iterator[None]:
    """A full or read-only filesystem while checking and claiming is one line (exit 1), as at any later write; an
    error without a path is the claim's (os.pwrite names none)."""
    try:
        yield
    except OSError as exc:
        if not files.no_room(exc):
            raise
        raise OutOfRoom(OSError(exc.errno, exc.strerror, exc.filename or claim_path), "run the same command") from None


def _train(config: TrainConfig, claim: runclaim.Claim | None, cluster: cluster_lib.Cluster | None) -> None:
    painter = Painter()  # forked now, while this process is small and single-threaded
    tf = tfquiet.import_tensorflow()
    if config.require_gpus and not tf.config.get_visible_devices("GPU"):
        from distmnist.environment.checks import gpu_finding

        raise UserError(
            f"--require_gpus: TensorFlow registered no GPU for this process: {gpu_finding(tf)}; nothing "
            "was trained (python -m distmnist.doctor has the whole report)"
        )
    from distmnist.runs.run import train_and_evaluate

    train_and_evaluate(
        config, imports_s=time.perf_counter() - distmnist.STARTED, painter=painter, claim=claim, cluster=cluster
    )


if __name__ == "__main__":
    cli.run(main, prog="distmnist.train", define_flags=define_flags)

"""train_and_evaluate in process on tiny data, with 1 and 2 logical CPU replicas: every artifact of a run, the
summary it returns, and a second call that resumes the finished run without training again."""

import dataclasses
import json

import pytest

from distmnist.common.config import TrainConfig
from distmnist.runs.run import train_and_evaluate
from distmnist.training.profiling import StepProfiler
from distmnist.training.strategy import make_strategy

from helpers import read_scalars

ARTIFACTS = {
    "train.svg",
    "test.svg",
    "confusion.svg",
    "mistakes.png",
    "calibration.svg",
    "saved_model",
    "checkpoints",
    "run.json",
    "run_config.json",
}


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_run_in_process(tmp_path, tiny_mnist, replicas):
    config = TrainConfig(
        logdir=str(tmp_path),
        run_name="r",
        max_steps=12,
        batch_size=16,
        log_every=4,
        eval_every=6,
        steps_per_loop=4,
        checkpoint_every=6,
        cpu_replicas=replicas,
    )
    summary = train_and_evaluate(config, choice=make_strategy(cpu_replicas=replicas), mnist=tiny_mnist)
    run_dir = tmp_path / "r"
    assert ARTIFACTS <= {p.name for p in run_dir.iterdir()}
    assert summary["global_step"] == 12 and summary["num_replicas"] == replicas
    assert summary["global_batch_size"] == 16 * replicas
    assert json.loads((run_dir / "run.json").read_text())["final_test_accuracy"] == summary["final_test_accuracy"]
    scalars = read_scalars(str(run_dir))
    assert [s for s, _ in scalars["loss"]] == [0, 4, 8] and [s for s, _ in scalars["accuracy"]] == [0, 6, 12]
    assert summary["calibration"]["temperature"] > 0
    timings = summary["timings"]
    parts = (
        "data_s",
        "setup_s",
        "first_call_s",
        "steps_s",
        "evaluations_s",
        "checkpoints_s",
        "profile_s",
        "export_s",
        "pictures_s",
    )
    assert set(timings) == {"imports_s", "total_s", *parts} and timings["imports_s"] is None  # not an entry point
    assert all(timings[p] >= 0 for p in parts) and sum(timings[p] for p in parts) <= timings["total_s"]
    assert timings["checkpoints_s"] > 0 and timings["evaluations_s"] > 0  # 2 checkpoints, 3 evaluations
    assert timings["profile_s"] == 0  # no --profile_steps

    again = train_and_evaluate(
        dataclasses.replace(config), choice=make_strategy(cpu_replicas=replicas), mnist=tiny_mnist
    )  # the same command: resumes at step 12, nothing left to train
    assert again["global_step"] == 12 and again["final_test_accuracy"] == summary["final_test_accuracy"]
    assert [s for s, _ in read_scalars(str(run_dir))["loss"]] == [0, 4, 8]  # each step once


def test_the_profiler_cuts_calls_at_its_range_and_not_after_it():
    """The controller ends calls where --profile_steps starts and ends; a run resumed past the range (or one
    without a profile) gets no edge at all: an edge behind the current step would make no progress."""
    profiler = StepProfiler("/nonexistent", (200, 300))
    assert [profiler.boundaries(step) for step in (0, 199, 200, 250, 300, 1000)] == [200, 200, 300, 300, None, None]
    assert StepProfiler("/nonexistent", None).boundaries(0) is None
    assert StepProfiler(None, (200, 300)).boundaries(0) is None  # a worker without a run directory

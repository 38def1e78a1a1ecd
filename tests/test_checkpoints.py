"""Checkpoints and exact resume: a run killed with SIGKILL and run again ends bit-identical to one that was
never interrupted; extending a run continues its logs without gaps or duplicates; other flags are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import REPO, run_module

FLAGS = ("--batch_size=32", "--log_every=50", "--eval_every=500", "--checkpoint_every=250", "--steps_per_loop=50")


def saved_weights(run_dir) -> list:
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "saved_model", "variables", "variables"))
    return [reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map()) if name.startswith("mlp/")]


def train(tiny_npz_dir, logdir, run_name, *extra):
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={logdir}",
                        f"--run_name={run_name}", *FLAGS, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_weights(a, b):
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # bit for bit


@pytest.mark.parametrize("input_path", ["device", "tfdata"])
def test_sigkill_then_rerun_ends_bit_identical(tmp_path, tiny_npz_dir, input_path):
    steps = "--max_steps=1500"
    train(tiny_npz_dir, tmp_path, "whole", steps, f"--input={input_path}")

    command = [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}",
               "--run_name=killed", *FLAGS, steps, f"--input={input_path}"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = tmp_path / "killed" / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 120
    while not index.exists():  # kill as soon as the first checkpoint is recorded, mid-run
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "run.json").exists()  # it really died before the end

    resumed = train(tiny_npz_dir, tmp_path, "killed", steps, f"--input={input_path}")
    assert "resuming" in resumed.stdout and "from step 1500" not in resumed.stdout
    assert_same_weights(saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "killed"))
    history = json.loads((tmp_path / "killed" / "run.json").read_text())["history"]
    assert [s for s, _ in history["loss"]] == list(range(0, 1500, 50))  # no gaps, no duplicates
    assert [s for s, _ in history["accuracy"]] == list(range(0, 1501, 500))


def test_flags_must_match_to_resume_and_overwrite_starts_afresh(tmp_path, tiny_npz_dir):
    train(tiny_npz_dir, tmp_path, "r", "--max_steps=500")
    refused = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}", "--run_name=r",
                         *FLAGS, "--max_steps=500", "--learning_rate=0.5")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was started with --learning_rate=1.5, not 0.5" in refused.stderr
    again = train(tiny_npz_dir, tmp_path, "r", "--max_steps=500", "--learning_rate=0.5", "--overwrite")
    assert "resuming" not in again.stdout
    assert json.loads((tmp_path / "r" / "run.json").read_text())["flags"]["learning_rate"] == 0.5

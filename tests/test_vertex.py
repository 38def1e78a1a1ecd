"""Vertex AI: a job's AIP_* folders become the run's (distmnist.vertex), and a job restarted after a stop resumes
from AIP_CHECKPOINT_DIR with its events in AIP_TENSORBOARD_LOG_DIR and its SavedModel in AIP_MODEL_DIR."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from distmnist.config import TrainConfig
from distmnist.errors import UserError
from distmnist.vertex import from_environment
from helpers import REPO, read_scalars, run_module, run_python

AIP = {"AIP_CHECKPOINT_DIR": "gs://b/jobs/j1/checkpoints/", "AIP_MODEL_DIR": "gs://b/jobs/j1/model/",
       "AIP_TENSORBOARD_LOG_DIR": "gs://b/jobs/j1/logs/"}


def test_vertex_folders_become_the_runs(tmp_path):
    fuse = tmp_path / "gcs"
    fuse.mkdir()
    config = from_environment(TrainConfig(), AIP, fuse_root=str(fuse))
    assert config.logdir == f"{fuse}/b/jobs/j1/checkpoints" and config.run_name == "run"  # through the mount
    assert config.events_dir == "gs://b/jobs/j1/logs" and config.export_dir == "gs://b/jobs/j1/model"  # gs://
    assert from_environment(TrainConfig(), {}) == TrainConfig()  # elsewhere nothing changes
    given = TrainConfig(logdir="/mine", run_name="r", events_dir="/ev", export_dir="/ex")
    assert from_environment(given, AIP, fuse_root=str(fuse)) == given  # flags given win
    with pytest.raises(UserError, match=r"gs://b/jobs/j1/checkpoints/ is in Cloud Storage, but this machine has no "
                                        r"Cloud Storage FUSE mount at /nonexistent"):
        from_environment(TrainConfig(), AIP, fuse_root="/nonexistent")


@pytest.mark.slow
def test_a_restarted_job_resumes_and_writes_where_vertex_says(tmp_path, tiny_npz_dir):
    env = {"AIP_CHECKPOINT_DIR": str(tmp_path / "checkpoints") + "/", "AIP_MODEL_DIR": str(tmp_path / "model") + "/",
           "AIP_TENSORBOARD_LOG_DIR": str(tmp_path / "logs") + "/"}
    args = [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", "--max_steps=400",
            "--batch_size=32", "--steps_per_loop=5", "--log_every=5", "--eval_every=50", "--checkpoint_every=10"]
    with open(tmp_path / "first.log", "w") as log:  # the job's first attempt, stopped as on preemption
        first = subprocess.Popen(args, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "step 100 loss" not in (tmp_path / "first.log").read_text():
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143, (tmp_path / "first.log").read_text()[-2000:]
    again = run_module("distmnist.train", *args[3:], env=env)  # the restart: the same command and environment
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stdout

    run_dir = tmp_path / "checkpoints" / "run"
    assert (run_dir / "run.json").exists() and (run_dir / "checkpoints").is_dir()
    assert not glob.glob(str(run_dir / "events.out.tfevents.*"))  # the events went to AIP_TENSORBOARD_LOG_DIR
    steps = [step for step, _ in read_scalars(str(tmp_path / "logs"))["loss"]]
    assert steps == list(range(0, 400, 5))  # each step once across the stop
    loaded = run_python(f"""
import numpy as np, tensorflow as tf
serve = tf.saved_model.load({str(tmp_path / 'model')!r}).signatures["serving_default"]
print(sorted(serve(images=tf.zeros([2, 28, 28], tf.uint8))))
""")
    assert loaded.returncode == 0 and loaded.stdout.strip() == "['classes', 'logits', 'outputs', 'probabilities']", \
        loaded.stderr[-2000:]

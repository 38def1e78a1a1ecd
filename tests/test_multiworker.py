"""Real multi-worker clusters on loopback: launch/local_cluster.sh, equivalence with one process, a lost worker
ending the run within the collective timeout instead of hanging it, and a stopped worker stopping the cluster
at one checkpoint that the cluster resumes from."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import REPO, free_ports, run_module, saved_weights

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

FLAGS = ("--max_steps=20", "--batch_size=32", "--log_every=5", "--eval_every=10")


def local_cluster(workers: int, *args: str, timeout_s: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", os.path.join(REPO, "launch", "local_cluster.sh"), str(workers), "--", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_tfdata_input_shards_across_workers(tmp_path, tiny_npz_dir):
    result = local_cluster(
        2, f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}", "--run_name=r", "--input=tfdata", *FLAGS
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    device = run_module(
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=d",
        "--cpu_replicas=2",
        "--nojit_compile",
        *FLAGS,
    )
    assert device.returncode == 0, device.stderr[-3000:]
    a, b = saved_weights(tmp_path / "r"), saved_weights(tmp_path / "d")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5


def test_a_failing_worker_stops_the_cluster_with_its_status(tmp_path, tiny_npz_dir):
    (tmp_path / "taken").mkdir()  # the chief refuses a folder that is not a distmnist run: exit 2
    (tmp_path / "taken" / "notes.txt").write_text("the user's")
    start = time.monotonic()
    result = local_cluster(2, f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}", "--run_name=taken", *FLAGS)
    assert result.returncode == 2
    assert "worker 0 exited with status 2; stopping the others" in result.stderr
    assert time.monotonic() - start < 120  # a bound, not a speed: a cluster that hung would never end


@pytest.mark.parametrize("timeout_s", [8])
def test_a_killed_worker_makes_the_other_exit_within_the_timeout(tmp_path, tiny_npz_dir, timeout_s):
    addresses = [f"localhost:{p}" for p in free_ports(2)]
    logs, procs = [], []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}),
        }
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distmnist.train",
                    f"--data_dir={tiny_npz_dir}",
                    f"--logdir={tmp_path}",
                    "--run_name=r",
                    "--max_steps=100000000",
                    "--log_every=1",
                    "--steps_per_loop=5",
                    f"--collective_timeout_s={timeout_s}",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while "step 20 loss" not in (tmp_path / "worker0.log").read_text():
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "worker0.log").read_text()
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        status = procs[0].wait(timeout=timeout_s + 30)
        elapsed = time.monotonic() - killed
    finally:
        for proc in procs:
            proc.kill()
        for log in logs:
            log.close()
    output = (tmp_path / "worker0.log").read_text()
    assert status == 138, output[-3000:]  # a lost peer: retryable (engines retry 128 and above)
    errors = [line for line in output.splitlines() if "distmnist.train: error:" in line]
    assert len(errors) == 1 and "worker 0 (localhost:" in errors[0] and "lost contact with the cluster" in errors[0]
    assert f"worker 1 ({addresses[1]})" in errors[0]
    assert "Traceback" not in output
    assert elapsed < timeout_s + 20


def start_workers(tmp_path, tag, *args):
    addresses = [f"localhost:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}),
        }
        with open(tmp_path / f"{tag}{index}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distmnist.train", *args],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def test_a_stopped_worker_stops_the_cluster_at_one_checkpoint_and_the_cluster_resumes(tmp_path, tiny_npz_dir):
    args = (
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=r",
        "--max_steps=400",
        "--batch_size=32",
        "--log_every=10",
        "--eval_every=100",
        "--checkpoint_every=100",
    )
    procs = start_workers(tmp_path, "first", *args)
    try:
        deadline = time.monotonic() + 120
        while "step 120 loss" not in (tmp_path / "first0.log").read_text():
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "first0.log").read_text()
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)  # the worker that holds no checkpoints: the chief must stop too
        statuses = [proc.wait(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    chief, other = ((tmp_path / f"first{i}.log").read_text() for i in range(2))
    assert statuses == [143, 143], chief[-2000:] + other[-2000:]
    assert "Traceback" not in chief + other
    step = int(other.split("stopped by SIGTERM at step ")[1].split()[0])
    assert f"stopped because another worker was stopped at step {step} of 400 with a checkpoint" in chief
    assert 120 <= step < 400
    assert tf.train.latest_checkpoint(str(tmp_path / "r" / "checkpoints")).endswith(f"ckpt-{step}")

    # The same command again, this time through launch/local_cluster.sh: the cluster resumes and finishes.
    again = local_cluster(2, *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (
        f"[worker 0] resuming from step {step}, the latest checkpoint in {tmp_path / 'r' / 'checkpoints'}"
        in again.stdout
    )
    assert f"[worker 1] resuming from step {step}, the latest checkpoint in the chief" in again.stdout
    assert "[worker 1] worker 1 (localhost:" in again.stdout  # it trained to the end, and wrote nothing
    summary = json.loads((tmp_path / "r" / "run.json").read_text())
    assert summary["num_replicas"] == 2 and summary["global_batch_size"] == 64
    assert summary["strategy"] == "MultiWorkerMirroredStrategy (2 workers, ring collectives)"
    assert [s for s, _ in summary["history"]["loss"]] == list(range(0, 400, 10))
    written = {n for n in os.listdir(tmp_path / "r") if not n.startswith("events.out.tfevents.")}
    assert written == {
        "checkpoints",
        "saved_model",
        "run.json",
        "run_config.json",
        "train.svg",
        "test.svg",
        "confusion.svg",
        "mistakes.png",
        "calibration.svg",
    }  # the chief's whole run, no leftovers

    single = run_module("distmnist.train", *args[:2], "--run_name=single", "--cpu_replicas=2", *args[3:])
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = saved_weights(tmp_path / "r"), saved_weights(tmp_path / "single")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5


def test_a_chief_and_a_worker_as_kubeflow_starts_them_train_and_the_chief_alone_writes(tmp_path, tiny_npz_dir):
    """TF_CONFIG as Kubeflow's operator writes it (a chief beside the workers, an environment key); each pod with
    its own --logdir, as only the chief mounts the claim."""
    chief, worker = (f"localhost:{p}" for p in free_ports(2))
    procs = []
    for kind, logdir in (("chief", tmp_path / "claim"), ("worker", tmp_path / "pod")):
        tf_config = {
            "cluster": {"chief": [chief], "worker": [worker]},
            "task": {"type": kind, "index": 0},
            "environment": "cloud",
        }
        with open(tmp_path / f"{kind}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distmnist.train",
                        f"--data_dir={tiny_npz_dir}",
                        f"--logdir={logdir}",
                        "--run_name=job",
                        *FLAGS,
                    ],
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
                )
            )
    try:
        statuses = [proc.wait(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    chief_log, worker_log = ((tmp_path / f"{kind}.log").read_text() for kind in ("chief", "worker"))
    assert statuses == [0, 0], chief_log[-2000:] + worker_log[-2000:]
    assert "MultiWorkerMirroredStrategy (2 workers" in chief_log
    summary = json.loads((tmp_path / "claim" / "job" / "run.json").read_text())
    assert summary["global_step"] == 20 and summary["num_replicas"] == 2
    assert (tmp_path / "claim" / "job" / "saved_model" / "saved_model.pb").exists()
    assert f"worker 0 ({worker}): done after 20 steps; the chief writes the run directory" in worker_log
    assert not (tmp_path / "pod").exists()  # the worker wrote nothing of the run

"""One writer per run directory (distmnist/runclaim.py): a second process given a claimed run stops in one line
naming the holder, a killed holder's lock is gone at once, a lease (for FUSE mounts, here on a folder standing in
for one) is taken over only once its heartbeat is stale; and two real trainings of one run name."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from distmnist.runs import runclaim

from helpers import REPO

HOLDER = """
import sys, time
from distmnist.runs import runclaim
claim = runclaim.take(sys.argv[1], "r")
print("claimed", flush=True)
time.sleep(600)
"""


def holder(logdir, env=None):
    """A process that claims <logdir>/r and holds it, once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(logdir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


@pytest.mark.slow  # starts a holder process
def test_a_held_lock_is_named_and_a_killed_holders_lock_is_gone_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTMNIST_RUN_CLAIM", raising=False)
    first = holder(tmp_path / "logs")
    try:
        with pytest.raises(runclaim.Claimed, match=rf"run directory {tmp_path}/logs/r is in use by another "
                                                   rf"distmnist process \(pid {first.pid} on \S+, since \S+\); "
                                                   "wait for it to end, or choose another --run_name"):
            runclaim.take(str(tmp_path / "logs"), "r")
        assert sorted(os.listdir(tmp_path / "logs")) == [".r.claim"]  # the claim lives beside the run, not in it
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    claim = runclaim.take(str(tmp_path / "logs"), "r")  # no stale lock after SIGKILL: the kernel released it
    claim.release()


def test_abandoning_a_claim_leaves_nothing_it_made(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTMNIST_RUN_CLAIM", raising=False)
    claim = runclaim.take(str(tmp_path / "a" / "logs"), "r")
    claim.abandon()
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()
    runclaim.take(str(tmp_path / "kept"), "r").abandon()
    assert os.listdir(tmp_path / "kept") == []


@pytest.mark.slow  # starts a holder process
def test_a_lease_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path, monkeypatch):
    """DISTMNIST_RUN_CLAIM=lease stands for a FUSE mount, where a lock would hold on one machine only."""
    lease = {"DISTMNIST_RUN_CLAIM": "lease", "DISTMNIST_LEASE_BEAT_S": "0.3", "DISTMNIST_LEASE_STALE_S": "3"}
    for key, value in lease.items():
        monkeypatch.setenv(key, value)
    first = holder(tmp_path, lease)
    time.sleep(1.0)  # it beats meanwhile: still fresh
    with pytest.raises(runclaim.Claimed, match=rf"pid {first.pid} on"):
        runclaim.take(str(tmp_path), "r")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = time.monotonic()
    with pytest.raises(runclaim.Claimed, match=rf"pid {first.pid} on"):  # a lease does not know its holder died
        runclaim.take(str(tmp_path), "r")
    while time.monotonic() - killed < 3.5:
        time.sleep(0.1)
    claim = runclaim.take(str(tmp_path), "r")  # stale now: taken over
    try:
        assert runclaim._read(runclaim.claim_path(str(tmp_path), "r"))["pid"] == os.getpid()
    finally:
        claim.release()
    assert not os.path.exists(runclaim.claim_path(str(tmp_path), "r"))  # released: the lease is gone


def test_the_claim_kind_follows_the_mount(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTMNIST_RUN_CLAIM", raising=False)
    assert runclaim.kind_for(str(tmp_path)) == "lock"
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", "flock")
    with pytest.raises(runclaim.UserError, match="DISTMNIST_RUN_CLAIM must be lock or lease"):
        runclaim.kind_for(str(tmp_path))


TRAIN = ("--max_steps=100000000", "--batch_size=32", "--log_every=50", "--checkpoint_every=100",
         "--eval_every=100000")


@pytest.mark.slow
def test_two_trainings_of_one_run_one_trains_the_other_stops_at_once(tmp_path, tiny_npz_dir):
    args = [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}",
            "--run_name=same", *TRAIN]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "step 100 " not in (tmp_path / "first.log").read_text():
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        # A TensorFlow that cannot be imported first on the path: the second process must stop before it would.
        no_tf = tmp_path / "no_tensorflow" / "tensorflow"
        no_tf.mkdir(parents=True)
        (no_tf / "__init__.py").write_text("raise ImportError('the second process imported TensorFlow')\n")
        started = time.monotonic()
        second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
                                     "PYTHONPATH": str(no_tf.parent)})
        took_s = time.monotonic() - started
        assert second.returncode == 2 and second.stdout == ""
        assert re.fullmatch(rf"distmnist.train: error: run directory {tmp_path}/same is in use by another "
                            rf"distmnist process \(pid {first.pid} on \S+, since \S+\); wait for it to end, or "
                            r"choose another --run_name\n", second.stderr), second.stderr
        print(f"the second process stopped {took_s:.2f} s after it started, before importing TensorFlow")
        overwrite = subprocess.run(args + ["--overwrite"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert overwrite.returncode == 2 and "is in use by another distmnist process" in overwrite.stderr
        assert first.poll() is None  # --overwrite does not break another process's claim
        # The run directory is the first's alone: every event file is its own (their names end in host.pid...).
        events = glob.glob(str(tmp_path / "same" / "events.out.tfevents.*"))
        assert events and {name.split(".")[-3] for name in events} == {str(first.pid)}
        first.send_signal(signal.SIGKILL)  # no clean exit, no release: the kernel lets the claim go
        first.wait()
        third = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            resumed = False
            for line in third.stdout:  # the same command resumes the killed run, and trains on
                resumed = resumed or line.startswith("resuming from step")
                if resumed and line.startswith("step "):
                    break
            else:
                pytest.fail("the third process ended without resuming")
            third.send_signal(signal.SIGTERM)
            assert third.wait(timeout=60) == 143
        finally:
            third.kill()
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_two_trainings_started_together_one_trains(tmp_path, tiny_npz_dir):
    args = [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}",
            "--run_name=same", "--max_steps=60", "--batch_size=32", "--eval_every=30"]
    both = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.pid,) + p.communicate(timeout=300) + (p.returncode,) for p in both]
    statuses = sorted(status for *_, status in results)
    assert statuses == [0, 2], [(status, err[-500:]) for _, _, err, status in results]
    winner = next(pid for pid, _, _, status in results if status == 0)
    loser_err = next(err for _, _, err, status in results if status == 2)
    assert len(loser_err.splitlines()) == 1 and f"(pid {winner} on" in loser_err
    events = glob.glob(str(tmp_path / "same" / "events.out.tfevents.*"))
    assert events and {name.split(".")[-3] for name in events} == {str(winner)}


@pytest.mark.slow
def test_a_stopped_run_lets_its_lease_go_so_a_restarted_job_resumes_at_once(tmp_path, tiny_npz_dir, monkeypatch):
    """On a FUSE mount (a lease stands for it here) a run stopped by SIGTERM, as a preempted Vertex AI job is,
    releases its claim on the way out: the restarted job, a few seconds later, is not refused for a minute."""
    lease = {**os.environ, "DISTMNIST_RUN_CLAIM": "lease", "DISTMNIST_LEASE_BEAT_S": "0.3"}
    args = [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}",
            "--run_name=job", *TRAIN]
    first = subprocess.Popen(args, cwd=REPO, env=lease, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:
            if line.startswith("step 100 "):
                break
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
    finally:
        first.kill()
    assert not os.path.exists(runclaim.claim_path(str(tmp_path), "job"))
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", "lease")
    monkeypatch.setenv("DISTMNIST_LEASE_BEAT_S", "0.3")
    runclaim.take(str(tmp_path), "job").release()  # at once: nothing holds it

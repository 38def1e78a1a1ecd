"""One writer per run directory (distmnist/runclaim.py): a second process given a claimed run stops in one line
naming the holder, a killed holder's lock is gone at once, a lease (for FUSE mounts, here on a folder standing in
for one) is taken over once its heartbeat is stale, or at once when its holder on this host is gone; a lease lost
while training stops the run; claim files and settings that are not what they should be are one line; and two
real trainings of one run name."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from distmnist.common.config import TrainConfig
from distmnist.common.errors import RunFailed
from distmnist.runs import runclaim

from helpers import REPO

HOLDER = """
import socket, sys, time
from distmnist.runs import runclaim
if len(sys.argv) > 2:  # a holder on another machine
    socket.gethostname = lambda: sys.argv[2]
claim = runclaim.take(sys.argv[1], "r")
print("claimed", flush=True)
time.sleep(600)
"""


def holder(logdir, env=None, host=None):
    """A process that claims <logdir>/r and holds it, once it says so; host: the host name it gives."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(logdir), *([host] if host else [])],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    assert proc.stdout.readline().strip() == "claimed"
    return proc


@pytest.mark.slow  # starts a holder process
def test_a_held_lock_is_named_and_a_killed_holders_lock_is_gone_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTMNIST_RUN_CLAIM", raising=False)
    first = holder(tmp_path / "logs")
    try:
        with pytest.raises(
            runclaim.Claimed,
            match=rf"run directory {tmp_path}/logs/r is in use by another "
            rf"distmnist process \(pid {first.pid} on \S+, since \S+\); "
            "wait for it to end, or choose another --run_name",
        ):
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
    """DISTMNIST_RUN_CLAIM=lease stands for a FUSE mount, where a lock would hold on one machine only; the holder
    says it is on another machine, whose processes this one cannot see."""
    lease = {"DISTMNIST_RUN_CLAIM": "lease", "DISTMNIST_LEASE_BEAT_S": "0.3", "DISTMNIST_LEASE_STALE_S": "3"}
    for key, value in lease.items():
        monkeypatch.setenv(key, value)
    first = holder(tmp_path, lease, host="elsewhere")
    time.sleep(1.0)  # it beats meanwhile: still fresh
    with pytest.raises(runclaim.Claimed, match=rf"pid {first.pid} on elsewhere"):
        runclaim.take(str(tmp_path), "r")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = time.monotonic()
    with pytest.raises(runclaim.Claimed, match=rf"pid {first.pid} on"):  # from here, nothing says its holder died
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


TRAIN = ("--max_steps=100000000", "--batch_size=32", "--log_every=50", "--checkpoint_every=100", "--eval_every=100000")


@pytest.mark.slow
def test_two_trainings_of_one_run_one_trains_the_other_stops_at_once(tmp_path, tiny_npz_dir):
    args = [
        sys.executable,
        "-m",
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=same",
        *TRAIN,
    ]
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
        second = subprocess.run(
            args,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
                "PYTHONPATH": str(no_tf.parent),
            },
        )
        took_s = time.monotonic() - started
        assert second.returncode == 2 and second.stdout == ""
        assert re.fullmatch(
            rf"distmnist.train: error: run directory {tmp_path}/same is in use by another "
            rf"distmnist process \(pid {first.pid} on \S+, since \S+\); wait for it to end, or "
            r"choose another --run_name\n",
            second.stderr,
        ), second.stderr
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
    args = [
        sys.executable,
        "-m",
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=same",
        "--max_steps=60",
        "--batch_size=32",
        "--eval_every=30",
    ]
    both = [
        subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
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
    args = [
        sys.executable,
        "-m",
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=job",
        *TRAIN,
    ]
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


# --- a lease whose holder is gone, settings and claim files that are not what they should be ----------------------

LEASE = {"DISTMNIST_RUN_CLAIM": "lease", "DISTMNIST_LEASE_BEAT_S": "0.1"}


def write_claim(logdir, **fields) -> dict:
    """A lease claim on <logdir>/r as a holder writes it: this host, this boot, a fresh heartbeat, unless told."""
    claim = {
        "host": socket.gethostname(),
        "boot_id": runclaim.boot_id(),
        "pid": os.getpid(),
        "started": runclaim.process_started(os.getpid()),
        "since": "2026-12-07T00:00:00+00:00",
        "token": uuid.uuid4().hex,
        "beat": time.time(),
        **fields,
    }
    with open(runclaim.claim_path(str(logdir), "r"), "w") as f:
        json.dump(claim, f)
    return claim


def _ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert runclaim.process_started(proc.pid) is None
    return proc.pid


@pytest.mark.parametrize("holder_is", ["gone", "reused pid"])
def test_a_lease_whose_holder_on_this_host_is_gone_is_taken_at_once(tmp_path, monkeypatch, holder_is):
    """A Kubernetes container OOM-killed and restarted at once finds its dead self's fresh lease: on this host, in
    this boot, its pid gone, or alive but another process (a restarted container often gets its old pid)."""
    for key, value in LEASE.items():
        monkeypatch.setenv(key, value)
    if holder_is == "gone":
        dead = write_claim(tmp_path, pid=_ended_pid())
    else:
        dead = write_claim(tmp_path, started=runclaim.process_started(os.getpid()) - 1)
    started = time.monotonic()
    claim = runclaim.take(str(tmp_path), "r")
    try:
        assert time.monotonic() - started < 5  # not the 60 s of a stale heartbeat
        now = runclaim._read(runclaim.claim_path(str(tmp_path), "r"))
        assert now["token"] == claim.token != dead["token"] and now["pid"] == os.getpid()
        assert now["boot_id"] == runclaim.boot_id() and now["started"] == runclaim.process_started(os.getpid())
    finally:
        claim.release()


@pytest.mark.parametrize("holder_is", ["alive", "on another host", "of another boot", "of an older version"])
def test_a_fresh_lease_whose_holder_may_be_alive_is_refused(tmp_path, monkeypatch, holder_is):
    """Only what this host's kernel can tell is judged: a live pid that started when the claim says, another
    machine's pid, a pid of an earlier boot (another process may have it now), a claim without a boot id."""
    for key, value in LEASE.items():
        monkeypatch.setenv(key, value)
    fields = {
        "alive": {},
        "on another host": {"host": "elsewhere", "pid": _ended_pid()},
        "of another boot": {"boot_id": "an-earlier-boot", "pid": _ended_pid()},
        "of an older version": {"boot_id": None, "started": None, "pid": _ended_pid()},
    }[holder_is]
    held = write_claim(tmp_path, **{k: v for k, v in fields.items()})
    with pytest.raises(runclaim.Claimed, match=rf"is in use by another distmnist process \(pid {held['pid']} on "):
        runclaim.take(str(tmp_path), "r")
    assert runclaim._read(runclaim.claim_path(str(tmp_path), "r"))["token"] == held["token"]


NOT_CLAIMS = {
    "not JSON": b"garbage",
    "not a JSON object": b"[1, 2]",
    "no valid 'pid'": b'{"host": "h", "pid": "12", "since": "s", "token": "t", "beat": 1.0}',
    "no valid 'token'": b'{"host": "h", "pid": 12, "since": "s", "beat": 1.0}',
    "deeply nested": b"[" * 2000 + b"]" * 2000,
    "over 4096 bytes": b'{"host": "' + b"h" * 5000 + b'"}',
}


@pytest.mark.parametrize("kind", ["lock", "lease"])
@pytest.mark.parametrize("content", NOT_CLAIMS)
def test_a_claim_file_that_is_not_a_claim_is_one_line_and_left_as_it_is(tmp_path, monkeypatch, kind, content):
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", kind)
    path = tmp_path / ".r.claim"
    path.write_bytes(NOT_CLAIMS[content])
    with pytest.raises(runclaim.NotAClaim) as caught:
        runclaim.take(str(tmp_path), "r")
    why = "not JSON" if content == "deeply nested" else content
    assert str(caught.value) == (
        f"{path} is not a distmnist run claim ({why}); if no distmnist process is using this "
        "run, remove it and run the same command again"
    )
    assert path.read_bytes() == NOT_CLAIMS[content] and sorted(os.listdir(tmp_path)) == [".r.claim"]


@pytest.mark.parametrize("kind", ["lock", "lease"])
@pytest.mark.parametrize("thing", ["a folder", "a link", "a FIFO", "a socket"])
def test_a_claim_path_that_is_not_a_file_is_one_line_and_nothing_is_written_through_it(
    tmp_path, monkeypatch, kind, thing
):
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", kind)
    path = tmp_path / ".r.claim"
    target = tmp_path / "someone's file"
    target.write_text("theirs")
    if thing == "a folder":
        path.mkdir()
    elif thing == "a link":
        path.symlink_to(target)
    elif thing == "a FIFO":
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    with pytest.raises(
        runclaim.NotAClaim,
        match=rf"^{path} is not a distmnist run claim \((not a regular file|a "
        r"symbolic link)\); if no distmnist process",
    ):
        runclaim.take(str(tmp_path), "r")  # a FIFO would hang a reader that waits for a writer
    assert target.read_text() == "theirs" and sorted(os.listdir(tmp_path)) == [".r.claim", "someone's file"]


def test_an_empty_claim_file_is_a_holder_that_died_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", "lock")
    (tmp_path / ".r.claim").write_bytes(b"")
    runclaim.take(str(tmp_path), "r").release()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DISTMNIST_LEASE_STALE_S", "abc", "DISTMNIST_LEASE_STALE_S must be a positive number of seconds, got 'abc'"),
        ("DISTMNIST_LEASE_STALE_S", "nan", "DISTMNIST_LEASE_STALE_S must be a positive number of seconds, got 'nan'"),
        ("DISTMNIST_LEASE_STALE_S", "inf", "DISTMNIST_LEASE_STALE_S must be a positive number of seconds, got 'inf'"),
        ("DISTMNIST_LEASE_STALE_S", "-5", "DISTMNIST_LEASE_STALE_S must be a positive number of seconds, got '-5'"),
        ("DISTMNIST_LEASE_STALE_S", "", "DISTMNIST_LEASE_STALE_S must be a positive number of seconds, got ''"),
        (
            "DISTMNIST_LEASE_STALE_S",
            "15",
            "DISTMNIST_LEASE_STALE_S (15 s) must be more than twice "
            "DISTMNIST_LEASE_BEAT_S (10 s): a holder that beats must never look stale",
        ),
        ("DISTMNIST_LEASE_BEAT_S", "0", "DISTMNIST_LEASE_BEAT_S must be a positive number of seconds, got '0'"),
    ],
)
@pytest.mark.parametrize("kind", ["lock", "lease"])
def test_a_malformed_lease_setting_is_one_line_and_nothing_is_made(tmp_path, monkeypatch, name, value, message, kind):
    monkeypatch.setenv("DISTMNIST_RUN_CLAIM", kind)
    monkeypatch.setenv(name, value)
    with pytest.raises(runclaim.UserError) as caught:
        runclaim.take(str(tmp_path / "logs"), "r")
    assert str(caught.value) == message
    assert os.listdir(tmp_path) == []


# --- a lease lost while the run trains ----------------------------------------------------------------------------


def train_while(tmp_path, tiny_mnist, monkeypatch, spoil, **settings) -> tuple:
    """Trains under a lease (a heartbeat every 0.1 s, stale after 1 s) until spoil(claim path) is done to it after
    the first checkpoint, and the run fails as it must; returns (its one line, the checkpoints there were when it
    was spoilt, and at the end, by step)."""
    from distmnist.runs.run import train_and_evaluate
    from distmnist.training.strategy import make_strategy

    for key, value in {**LEASE, "DISTMNIST_LEASE_STALE_S": "1"}.items():
        monkeypatch.setenv(key, value)
    config = TrainConfig(
        logdir=str(tmp_path),
        run_name="r",
        max_steps=10**7,
        batch_size=16,
        eval_every=10**7,
        log_every=10**6,
        jit_compile=False,
        **settings,
    )
    claim = runclaim.take(str(tmp_path), "r")
    checkpoints = tmp_path / "r" / "checkpoints"
    spoilt = {}

    def steps():
        return sorted(int(path.name[5:-6]) for path in checkpoints.glob("ckpt-*.index"))

    def spoil_after_the_first_checkpoint():
        while not steps():
            time.sleep(0.01)
        spoilt["checkpoints"] = steps()
        spoil(runclaim.claim_path(str(tmp_path), "r"))

    spoiler = threading.Thread(target=spoil_after_the_first_checkpoint, daemon=True)
    spoiler.start()
    try:
        with pytest.raises(RunFailed) as caught:
            train_and_evaluate(config, choice=make_strategy(), mnist=tiny_mnist, claim=claim)
    finally:
        claim.release()
        spoiler.join(timeout=10)
    return str(caught.value), spoilt["checkpoints"], steps()


def test_a_takeover_seen_by_the_heartbeat_stops_the_run_without_writing_more(tmp_path, tiny_mnist, monkeypatch):
    """Another process's claim in the lease: the run stops at the end of the call in flight and writes no
    checkpoint after it, since the run is the other process's now (it has restored the latest checkpoint already
    and trains from it); its claim is left in place."""
    newcomer = {}

    def take_over(path):
        newcomer.update(
            host="elsewhere", pid=4242, since="2026-12-07T00:00:00+00:00", token=uuid.uuid4().hex, beat=time.time()
        )
        with open(f"{path}.new", "w") as f:
            json.dump(newcomer, f)
        os.replace(f"{path}.new", path)

    message, at_takeover, at_end = train_while(
        tmp_path, tiny_mnist, monkeypatch, take_over, steps_per_loop=2, checkpoint_every=100
    )
    match = re.fullmatch(
        rf"another distmnist process \(pid 4242 on elsewhere, since 2026-12-07T00:00:00\+00:00\) "
        rf"took over this run's claim {tmp_path}/\.r\.claim: stopped at step (\d+) of 10000000 "
        r"without a checkpoint, so that one process writes the run \(its latest checkpoint: step "
        r"(\d+)\)",
        message,
    )
    assert match, message
    stopped, latest = int(match.group(1)), int(match.group(2))
    assert at_takeover == [100] and at_end[-1] == latest
    # It stopped within a few calls (its heartbeat every 0.1 s) and wrote no checkpoint at its stop: the latest is
    # one of every 100 steps, written before the heartbeat saw the takeover.
    assert 100 < stopped < 10**7 and (latest < stopped or stopped % 100 == 0)
    assert runclaim._read(runclaim.claim_path(str(tmp_path), "r"))["token"] == newcomer["token"]


def test_a_heartbeat_that_cannot_be_written_stops_the_run_with_a_checkpoint(tmp_path, tiny_mnist, monkeypatch):
    """The lease cannot be written (a folder where the file was; on a FUSE mount, the bucket gone for a while):
    after LEASE_STALE_S / 2 without a heartbeat the run stops with a checkpoint, before a newcomer could take the
    run over."""

    def unwritable(path):
        os.remove(path)
        os.mkdir(path)

    message, _, at_end = train_while(
        tmp_path, tiny_mnist, monkeypatch, unwritable, steps_per_loop=3, checkpoint_every=7
    )
    match = re.fullmatch(
        rf"no heartbeat could be written to this run's claim {tmp_path}/\.r\.claim for "
        r"0\.\d s \(Is a directory\): stopped at step (\d+) of 10000000 with a checkpoint in "
        rf"{tmp_path}/r/checkpoints, before another process could take the run over; once the claim "
        r"can be written, run the same command with --run_name=r to resume",
        message,
    )
    assert match, message
    assert at_end[-1] == int(match.group(1))
    os.rmdir(runclaim.claim_path(str(tmp_path), "r"))
    assert sorted(os.listdir(tmp_path)) == ["r"]  # the heartbeat's temporary files are gone


@pytest.mark.slow
@pytest.mark.parametrize("case", ["claim file", "setting"])
def test_the_entry_point_refuses_a_bad_claim_file_or_setting_in_one_line(tmp_path, tiny_npz_dir, case):
    env = {**os.environ, "DISTMNIST_RUN_CLAIM": "lease"}
    if case == "claim file":
        (tmp_path / ".r.claim").write_text('{"host": "h"}')
    else:
        env["DISTMNIST_LEASE_STALE_S"] = "soon"
    before = sorted(os.listdir(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}", "--run_name=r"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2 and result.stdout == ""
    expected = (
        f"{tmp_path}/.r.claim is not a distmnist run claim (no valid 'pid')"
        if case == "claim file"
        else "DISTMNIST_LEASE_STALE_S must be a positive number of seconds, got 'soon'"
    )
    assert result.stderr.startswith(f"distmnist.train: error: {expected}") and result.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_a_chief_killed_and_restarted_at_once_resumes_its_run_under_a_lease(tmp_path, tiny_npz_dir):
    """A Kubernetes chief OOM-killed and restarted at once, its logdir on a FUSE mount: the same command takes
    its dead self's fresh lease and resumes, instead of failing the job with exit 2."""
    env = {**os.environ, "DISTMNIST_RUN_CLAIM": "lease"}
    args = [
        sys.executable,
        "-m",
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=job",
        *TRAIN,
    ]
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:
            if line.startswith("step 100 "):
                break
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    assert json.loads((tmp_path / ".job.claim").read_text())["pid"] == first.pid  # fresh: beaten seconds ago
    again = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in again.stdout:
            lines.append(line)
            if line.startswith("step "):
                break
        assert any(line.startswith("resuming from step") for line in lines), "".join(lines)
        assert any(
            f"taking over the claim of pid {first.pid} on {socket.gethostname()}, which is no longer running" in line
            for line in lines
        ), "".join(lines)
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=60) == 143
    finally:
        again.kill()

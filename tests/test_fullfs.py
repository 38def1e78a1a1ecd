"""Out of space and read-only, on real filesystems: small tmpfs mounts made by the tests (skipped, saying why, where
this process may not mount one), filled at each stage of a run. Every failed write is one line naming the path
and what to do, exit 1, the last good checkpoint kept and the claim released; freed, the same command resumes."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from distmnist.common import files
from distmnist.common.config import TrainConfig
from distmnist.common.errors import OutOfRoom
from distmnist.runs import artifacts, outputs, run, runsetup
from distmnist.runs.painter import Painter
from distmnist.training.strategy import make_strategy

from helpers import REPO

PAGE = 4096  # tmpfs counts whole pages; folders and empty files take none


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, size) -> a fresh tmpfs of that size at tmp_path/name; all unmounted at the end."""
    mounted = []

    def mount(name: str, size: str):
        path = tmp_path / name
        path.mkdir()
        try:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except FileNotFoundError:
            pytest.skip("no mount command here: the full-filesystem tests mount small tmpfs")
        if result.returncode:
            pytest.skip(
                f"this process may not mount a tmpfs ({result.stderr.strip()}): the full-filesystem tests "
                "need root or CAP_SYS_ADMIN"
            )
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], capture_output=True, timeout=30)


def remount(path, options: str) -> None:
    result = subprocess.run(
        ["mount", "-o", f"remount,{options}", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def free_bytes(path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path, leave: int = 0) -> None:
    """Fills the filesystem at path with one file until `leave` bytes stay free."""
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while free_bytes(path) > leave:
            os.write(fd, b"\0" * min(1 << 20, free_bytes(path) - leave))
    finally:
        os.close(fd)
    assert free_bytes(path) == leave


def unfill(path) -> None:
    os.remove(os.path.join(path, "filler"))


def tiny_config(logdir, **changes) -> TrainConfig:
    return TrainConfig(
        logdir=str(logdir),
        run_name="r",
        max_steps=12,
        batch_size=16,
        log_every=4,
        eval_every=6,
        steps_per_loop=4,
        checkpoint_every=6,
        **changes,
    )


@pytest.mark.parametrize(
    "number, advice",
    [
        (errno.ENOSPC, "free space on its filesystem"),
        (errno.EDQUOT, "free space or raise the quota"),
        (errno.EROFS, "make its filesystem writable again"),
    ],
)
def test_tensorflows_words_for_a_full_disk_a_quota_and_a_read_only_filesystem_are_read(number, advice):
    """TensorFlow's file errors carry the C library's words after the path, not the number (as its SaveV2 said on a
    full tmpfs); a quota, which no tmpfs here can set, is read the same way."""
    message = f"{{{{function_node __wrapped__SaveV2}}}} /b/ckpt_temp/part-0.data; {os.strerror(number)} [Op:SaveV2]"
    error = files.no_room_in(message)
    assert (error.errno, error.filename) == (number, "/b/ckpt_temp/part-0.data")
    assert (
        str(OutOfRoom(error, "run it again")) == f"cannot write /b/ckpt_temp/part-0.data: {os.strerror(number)}; "
        f"{advice}, then run it again"
    )
    assert files.no_room_in("/b/x; Permission denied") is None


@pytest.mark.slow  # trains and exports, twice: make test, not test-fast
def test_events_that_find_no_room_name_their_file_and_the_same_call_then_resumes(mount_tmpfs, tiny_mnist):
    """Room for the run's settings, none for its first events: one error naming the event file; freed, it runs."""
    fs = mount_tmpfs("fs", "16m")
    fill(fs, leave=PAGE)  # run_config.json takes the one page left
    with pytest.raises(OutOfRoom) as failed:
        run.train_and_evaluate(tiny_config(fs), choice=make_strategy(), mnist=tiny_mnist)
    assert str(failed.value).startswith(f"cannot write {fs}/r/events.out.tfevents.")
    assert str(failed.value).endswith(
        ": No space left on device; free space on its filesystem, then run the same "
        "command with --run_name=r: it starts afresh"
    )
    unfill(fs)
    summary = run.train_and_evaluate(tiny_config(fs), choice=make_strategy(), mnist=tiny_mnist)
    assert summary["global_step"] == 12


@pytest.mark.slow  # trains and exports, twice: make test, not test-fast
def test_an_export_dir_without_room_still_gets_run_json_and_the_same_call_writes_it(mount_tmpfs, tmp_path, tiny_mnist):
    small = mount_tmpfs("small", "64k")  # a SavedModel of this model is 2.2 MB
    config = tiny_config(tmp_path / "logs", export_dir=str(small / "model"))
    with pytest.raises(
        OutOfRoom,
        match=rf"^cannot write {small}/model: No space left on device; free space on its "
        r"filesystem, then run the same command with --run_name=r to write it \(the "
        rf"run is complete in {tmp_path}/logs/r\)$",
    ):
        run.train_and_evaluate(config, choice=make_strategy(), mnist=tiny_mnist)
    done = json.loads((tmp_path / "logs" / "r" / "run.json").read_text())
    assert done["global_step"] == 12 and os.listdir(small) == []  # nothing half-written left in the export's place
    remount(small, "size=8m")
    again = run.train_and_evaluate(config, choice=make_strategy(), mnist=tiny_mnist)
    assert again["global_step"] == 12
    assert outputs.is_replaceable_export(str(small / "model"))  # a complete export, marked as distmnist's
    assert tf.saved_model.load(str(small / "model")).signatures["serving_default"] is not None


@pytest.mark.slow  # trains on a tmpfs: make test, not test-fast
def test_pictures_that_find_no_room_name_their_file(mount_tmpfs, tiny_mnist):
    fs = mount_tmpfs("fs", "16m")
    started = runsetup.set_up(tiny_config(fs), choice=make_strategy(), mnist=tiny_mnist)
    timing, history = run.train(started)
    fill(fs)
    painter = Painter(inline=True)
    with pytest.raises(OSError) as failed:
        artifacts.write_artifacts(started, timing, history, painter)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, f"{fs}/r/train.svg")
    assert not [name for name in os.listdir(fs / "r") if name.startswith(".tmp")]
    assert started.checkpointer.latest_step == 12  # the last checkpoint stays


TRAIN = (
    "--batch_size=16",
    "--log_every=50",
    "--eval_every=500",
    "--checkpoint_every=100",
    "--steps_per_loop=10",
    "--max_steps=2000",
)


def the_line(result_stderr: str) -> str:
    """The one error line on stderr (beside it only the run's own log lines: where MNIST came from)."""
    lines = [line for line in result_stderr.strip().splitlines() if "MNIST: loaded from" not in line]
    assert len(lines) == 1 and "Traceback" not in result_stderr, result_stderr[-3000:]
    return lines[0]


@pytest.mark.slow  # five training processes
def test_a_run_out_of_room_at_each_stage_says_so_in_one_line_and_resumes_once_freed(mount_tmpfs, tiny_npz_dir):
    fs = mount_tmpfs("fs", "16m")
    logdir, run_dir = fs / "logs", fs / "logs" / "r"
    args = [
        sys.executable,
        "-m",
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={logdir}",
        "--run_name=r",
        *TRAIN,
    ]

    def train():
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)

    # No room for the claim, the first write (before TensorFlow is imported).
    fill(fs)
    full = train()
    assert full.returncode == 1 and the_line(full.stderr) == (
        f"distmnist.train: error: cannot write {logdir}/.r.claim: No space left on device; free space on its "
        "filesystem, then run the same command"
    )

    # Room for the claim, none for the run's settings: no run directory is left to lock the name.
    unfill(fs)
    fill(fs, leave=PAGE)
    full = train()
    assert full.returncode == 1 and the_line(full.stderr) == (
        f"distmnist.train: error: cannot write {run_dir}/run_config.json: No space left on device; free space on "
        "its filesystem, then run the same command with --run_name=r: it starts afresh"
    )
    assert not run_dir.exists()

    # Room to train to a checkpoint, then none: whichever write comes next (events, history, checkpoint) fails.
    unfill(fs)
    training = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoints" / "checkpoint").exists():
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
        time.sleep(0.01)
    training.send_signal(signal.SIGSTOP)
    fill(fs)
    training.send_signal(signal.SIGCONT)
    _, stderr = training.communicate(timeout=180)
    line = the_line(stderr)
    assert training.returncode == 1 and f"{run_dir}" in line and "No space left on device" in line, line
    assert "--run_name=r" in line
    kept = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    step = int(kept.rpartition("-")[2])
    assert step >= 100 and tf.train.load_checkpoint(kept).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == step

    # Read-only: refused at the first write, the claim, with what to do.
    unfill(fs)
    remount(fs, "ro")
    read_only = train()
    assert read_only.returncode == 1 and the_line(read_only.stderr) == (
        f"distmnist.train: error: cannot write {logdir}: Read-only file system; make its filesystem writable again, "
        "then run the same command"
    )

    # Writable again: the same command resumes from the checkpoint kept, and finishes.
    remount(fs, "rw")
    resumed = train()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {step}," in resumed.stdout
    assert json.loads((run_dir / "run.json").read_text())["global_step"] == 2000

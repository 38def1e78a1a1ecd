"""Checkpoints, exact resume and stopping: a run killed with SIGKILL at several points and stopped with a
signal, then run again, ends bit-identical to one that was never interrupted, with TensorBoard curves that
have each step once; half-written and corrupt checkpoints are never used; a diverging run keeps its last good
checkpoint; other flags are refused."""

import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from distmnist.common.errors import RunFailed, UserError
from distmnist.runs.checkpoints import Checkpointer
from distmnist.runs.signals import StopOnSignal
from distmnist.training.controller import run_steps
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer, TrainerSettings

from helpers import REPO, assert_same_weights, read_scalars, run_module, saved_weights

pytestmark = [pytest.mark.slow]

STEPS = 1000
FLAGS = ("--batch_size=32", "--log_every=20", "--eval_every=200", "--checkpoint_every=400", "--steps_per_loop=25",
         f"--max_steps={STEPS}", "--deterministic")


def tensor_steps(run_dir) -> dict:
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}



def command(tiny_npz_dir, logdir, run_name, *extra):
    return [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={logdir}",
            f"--run_name={run_name}", *FLAGS, *extra]


def train(tiny_npz_dir, logdir, run_name, *extra):
    result = run_module("distmnist.train", *command(tiny_npz_dir, logdir, run_name, *extra)[3:])
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class Run:
    """A training process whose console we read line by line, to signal it at a known point."""

    def __init__(self, args, stderr_path):
        self.stderr_path = stderr_path
        with open(stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lines = []

    def read_until(self, text: str) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"the run ended before printing {text!r}: {''.join(self.lines)[-2000:]}"
                             f"{open(self.stderr_path).read()[-2000:]}")

    def signal_and_wait(self, signum) -> tuple:
        self.proc.send_signal(signum)
        sent = time.monotonic()
        self.lines += self.proc.stdout.readlines()
        status = self.proc.wait(timeout=60)
        return status, time.monotonic() - sent, open(self.stderr_path).read()


@pytest.mark.parametrize("extra, stop_signal", [
    (("--input=tfdata",), signal.SIGTERM),
    (("--cpu_replicas=2",), signal.SIGINT),
])
def test_killed_and_stopped_runs_resume_bit_identical(tmp_path, tiny_npz_dir, extra, stop_signal):
    # The uninterrupted run to compare with shares nothing with the others, so it runs beside them.
    with open(tmp_path / "whole.out", "w") as out:
        whole = subprocess.Popen(command(tiny_npz_dir, tmp_path, "whole", *extra), cwd=REPO, stdout=out,
                                 stderr=subprocess.STDOUT)
    args = command(tiny_npz_dir, tmp_path, "killed", *extra)
    checkpoints = tmp_path / "killed" / "checkpoints"

    # Kill point 1: as soon as the first checkpoint (step 400) is recorded, mid-call.
    first = Run(args, tmp_path / "1.err")
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint").exists():
        assert first.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    first.proc.kill()
    first.proc.wait()
    assert not (tmp_path / "killed" / "run.json").exists()  # it really died before the end

    # Kill point 2: between checkpoints (400 and 800), after it logged steps that the resumed run redoes.
    second = Run(args, tmp_path / "2.err")
    second.read_until("step 420 loss")
    second.proc.kill()
    second.proc.wait()
    assert "resuming from step 400," in second.lines[0]

    # A signal: the run finishes the call in flight, writes a checkpoint at that step and exits 128 + signum.
    third = Run(args, tmp_path / "3.err")
    third.read_until("step 600 loss")
    status, signal_to_exit_s, stderr = third.signal_and_wait(stop_signal)
    assert "resuming from step 400," in third.lines[0]  # the checkpoint before kill point 2, not the start
    assert status == 128 + stop_signal, stderr[-3000:]
    assert "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("distmnist.train: stopped")]
    assert len(stopped) == 1 and f"by {signal.Signals(stop_signal).name} at step" in stopped[0]
    assert stopped[0].endswith("run the same command with --run_name=killed to resume")  # a command that resumes
    stop_step = int(stopped[0].split(" at step ")[1].split()[0])
    assert 600 <= stop_step < 800
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith(f"ckpt-{stop_step}")
    assert signal_to_exit_s < 10, signal_to_exit_s
    print(f"signal to exit: {signal_to_exit_s:.2f} s")

    resumed = train(tiny_npz_dir, tmp_path, "killed", *extra)
    assert f"resuming from step {stop_step}," in resumed.stdout
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.out").read_text()[-3000:]
    assert_same_weights(saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "killed"))

    history = json.loads((tmp_path / "killed" / "run.json").read_text())["history"]
    assert [s for s, _ in history["loss"]] == list(range(0, STEPS, 20))  # no gaps, no duplicates
    assert [s for s, _ in history["accuracy"]] == list(range(0, STEPS + 1, 200))
    killed, whole = read_scalars(str(tmp_path / "killed")), read_scalars(str(tmp_path / "whole"))
    assert killed["loss"] == whole["loss"]  # TensorBoard's own reader: every step once, the same values
    assert killed["accuracy"] == whole["accuracy"]
    # Every summary (the mistakes images, the config text and HParams too) once, at the same steps.
    assert tensor_steps(tmp_path / "killed") == tensor_steps(tmp_path / "whole")


def test_a_diverging_run_keeps_its_last_good_checkpoint_and_exports_nothing(tmp_path, tiny_npz_dir):
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}", "--run_name=nan",
                        "--learning_rate=50", "--batch_size=32", "--checkpoint_every=2", "--steps_per_loop=10",
                        "--max_steps=200", "--cpu_replicas=2")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    step = int(errors[0].split("non-finite at step ")[1].split()[0])
    assert "on replica 0 (loss" in errors[0] and "lower --learning_rate" in errors[0]
    good = step - step % 2  # the checkpoint that ended the call before the diverging step
    assert f"the checkpoint of step {good} stays the latest" in errors[0]
    run_dir = tmp_path / "nan"
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"ckpt-{good}")
    assert not (run_dir / "saved_model").exists() and not (run_dir / "run.json").exists()
    assert not (run_dir / "train.svg").exists()


def test_flags_must_match_to_resume_and_overwrite_starts_afresh(tmp_path, tiny_npz_dir):
    train(tiny_npz_dir, tmp_path, "r", "--max_steps=50")
    refused = run_module("distmnist.train", *command(tiny_npz_dir, tmp_path, "r", "--max_steps=50",
                                                     "--learning_rate=0.5")[3:])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was started with --learning_rate=1.5, not 0.5" in refused.stderr
    again = train(tiny_npz_dir, tmp_path, "r", "--max_steps=50", "--learning_rate=0.5", "--overwrite")
    assert "resuming" not in again.stdout
    assert json.loads((tmp_path / "r" / "run.json").read_text())["flags"]["learning_rate"] == 0.5


def test_a_half_written_or_corrupt_latest_checkpoint_is_never_used(tmp_path, tiny_mnist, caplog):
    def trainer():
        return Trainer(TrainerSettings(batch_size=32), make_strategy().strategy, tiny_mnist)

    first = trainer()
    saver = Checkpointer(first, str(tmp_path), keep=3)
    saved = {}
    for step in (10, 20):
        run_steps(first, 10)
        saver.save(step, {"loss": [], "accuracy": []})
        saved[step] = first.weights()  # what the save copied: the next call trains while the files are written
    saver.wait()
    directory = tmp_path / "checkpoints"
    # A process killed while writing step 30: its files exist, but the index never named it.
    for path in directory.glob("ckpt-20.*"):
        (directory / path.name.replace("ckpt-20", "ckpt-30")).write_bytes(path.read_bytes())

    resumed = trainer()
    assert Checkpointer(resumed, str(tmp_path), keep=3).restore_latest() == 20
    for a, b in zip(resumed.weights(), saved[20], strict=True):
        np.testing.assert_array_equal(a, b)

    # The latest recorded checkpoint corrupted on disk: reported, and the one before it used.
    data = next(directory.glob("ckpt-20.data-*"))
    data.write_bytes(data.read_bytes()[:1000])
    resumed = trainer()
    with caplog.at_level("WARNING"):
        assert Checkpointer(resumed, str(tmp_path), keep=3).restore_latest() == 10
    assert "ckpt-20 cannot be read" in caplog.text and "trying the one before it" in caplog.text
    for a, b in zip(resumed.weights(), saved[10], strict=True):
        np.testing.assert_array_equal(a, b)

    # None readable: a clear error, never a silent restart from step 0.
    data = next(directory.glob("ckpt-10.data-*"))
    data.write_bytes(b"")
    with pytest.raises(UserError, match="no checkpoint in .* can be read; start afresh with --overwrite"):
        Checkpointer(trainer(), str(tmp_path), keep=3).restore_latest()


def test_a_checkpoint_that_cannot_be_written_is_reported_when_waited_for(tmp_path, tiny_mnist):
    trainer = Trainer(TrainerSettings(batch_size=32), make_strategy().strategy, tiny_mnist)
    saver = Checkpointer(trainer, None, keep=3)  # a worker's scratch folder: no history file, no makedirs
    run_steps(trainer, 10)
    saver.save(10, {})
    assert saver.latest_step == 10  # waits for the write
    shutil.rmtree(saver.directory)
    pathlib.Path(saver.directory).write_text("a file where the folder was")
    run_steps(trainer, 10)
    saver.save(20, {})  # returns at once: the write fails in TensorFlow's writer thread
    with pytest.raises(RunFailed, match=r"^the checkpoint of step 20 could not be written to .*: .+; free space"):
        saver.wait()
    os.remove(saver.directory)
    saver.close()

    # A run's own folder (the history is written first, by distmnist): the same line.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(RunFailed, match=r"^the checkpoint of step 20 could not be written to .*checkpoints: .+"):
        Checkpointer(trainer, str(run_dir), keep=3).save(20, {})


def test_a_repeated_sigterm_keeps_stopping_cleanly_and_ctrl_c_twice_quits():
    """On a preempted VM a preemption watcher and the shutdown script each send SIGTERM: the second must not cut
    the checkpoint short. A second Ctrl-C quits at once."""
    # Python's own SIGINT handler to return to (pytest-xdist's workers ignore SIGINT).
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _signal_twice()
    finally:
        signal.signal(signal.SIGINT, outside)


def _signal_twice():
    stream = io.StringIO()
    with StopOnSignal(stream) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # still alive: the handler ignores it
        assert stop.requested and stop.exit_status == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stream.getvalue().splitlines() == ["SIGTERM received: stopping after the current steps and writing a "
                                              "checkpoint (Ctrl-C or SIGKILL quits at once)"]
    # Training has stopped, but the process has its checkpoint's run to finish: a late SIGTERM (a watcher's and a
    # shutdown script's both come) is still absorbed, until the process exits with 143.
    os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    with StopOnSignal(io.StringIO()) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)

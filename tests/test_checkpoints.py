"""Checkpoints, exact resume and stopping: a run killed with SIGKILL at several points and stopped with a
signal, then run again, ends bit-identical to one that was never interrupted, with TensorBoard curves that
have each step once; half-written and corrupt checkpoints are never used; a damaged index is recovered from the
checkpoints themselves; a diverging run keeps its last good checkpoint; other flags are refused."""

import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from distmnist.common.config import TrainConfig
from distmnist.common.errors import RunFailed, UserError
from distmnist.runs.checkpoints import Checkpointer
from distmnist.runs.run import train_and_evaluate
from distmnist.runs.signals import StopOnSignal
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer, run_steps

from helpers import REPO, assert_same_weights, read_scalars, run_module, saved_weights, trainer_settings

STEPS = 1000
FLAGS = (
    "--batch_size=32",
    "--log_every=20",
    "--eval_every=200",
    "--checkpoint_every=400",
    "--steps_per_loop=25",
    f"--max_steps={STEPS}",
    "--deterministic",
)


def tensor_steps(run_dir) -> dict:
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def command(tiny_npz_dir, logdir, run_name, *extra):
    return [
        sys.executable,
        "-m",
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={logdir}",
        f"--run_name={run_name}",
        *FLAGS,
        *extra,
    ]


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
        raise AssertionError(
            f"the run ended before printing {text!r}: {''.join(self.lines)[-2000:]}"
            f"{open(self.stderr_path).read()[-2000:]}"
        )

    def signal_and_wait(self, signum) -> tuple:
        self.proc.send_signal(signum)
        sent = time.monotonic()
        self.lines += self.proc.stdout.readlines()
        status = self.proc.wait(timeout=60)
        return status, time.monotonic() - sent, open(self.stderr_path).read()


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, stop_signal",
    [
        (("--input=tfdata",), signal.SIGTERM),
        (("--cpu_replicas=2",), signal.SIGINT),
    ],
)
def test_killed_and_stopped_runs_resume_bit_identical(tmp_path, tiny_npz_dir, extra, stop_signal):
    # The uninterrupted run to compare with shares nothing with the others, so it runs beside them.
    with open(tmp_path / "whole.out", "w") as out:
        whole = subprocess.Popen(
            command(tiny_npz_dir, tmp_path, "whole", *extra), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
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


@pytest.mark.slow
def test_a_diverging_run_keeps_its_last_good_checkpoint_and_exports_nothing(tmp_path, tiny_npz_dir):
    result = run_module(
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=nan",
        "--learning_rate=50",
        "--batch_size=32",
        "--checkpoint_every=2",
        "--steps_per_loop=10",
        "--max_steps=200",
        "--cpu_replicas=2",
    )
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


@pytest.mark.slow
def test_flags_must_match_to_resume_and_overwrite_starts_afresh(tmp_path, tiny_npz_dir):
    train(tiny_npz_dir, tmp_path, "r", "--max_steps=50")
    refused = run_module(
        "distmnist.train", *command(tiny_npz_dir, tmp_path, "r", "--max_steps=50", "--learning_rate=0.5")[3:]
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was started with --learning_rate=1.5, not 0.5" in refused.stderr
    again = train(tiny_npz_dir, tmp_path, "r", "--max_steps=50", "--learning_rate=0.5", "--overwrite")
    assert "resuming" not in again.stdout
    assert json.loads((tmp_path / "r" / "run.json").read_text())["flags"]["learning_rate"] == 0.5


@pytest.mark.slow
def test_a_half_written_or_corrupt_latest_checkpoint_is_never_used(tmp_path, tiny_mnist, caplog):
    def trainer():
        return Trainer(trainer_settings(batch_size=32), make_strategy().strategy, tiny_mnist)

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
    assert "ckpt-20 cannot be used" in caplog.text and "trying the one before it" in caplog.text
    for a, b in zip(resumed.weights(), saved[10], strict=True):
        np.testing.assert_array_equal(a, b)

    # None readable: a clear error, never a silent restart from step 0.
    data = next(directory.glob("ckpt-10.data-*"))
    data.write_bytes(b"")
    # The index now lists ckpt-10 alone: a checkpoint after the one restored is never listed again (nor pruned).
    with pytest.raises(
        UserError,
        match=r"no checkpoint in .* can be used \(ckpt-10: .*\); nothing was changed: "
        "restore the folder from a copy, or start afresh with --overwrite",
    ):
        Checkpointer(trainer(), str(tmp_path), keep=3).restore_latest()


def test_a_fault_in_the_writer_thread_is_raised_by_wait_not_taken_for_a_written_checkpoint(tiny_mnist, monkeypatch):
    trainer = Trainer(trainer_settings(batch_size=32), make_strategy().strategy, tiny_mnist)
    saver = Checkpointer(trainer, None, keep=3)
    run_steps(trainer, 2)

    def broken(names):
        raise ValueError("a bug in the index writer")

    monkeypatch.setattr(saver, "_record", broken)
    saver.save(2, {})
    with pytest.raises(ValueError, match="a bug in the index writer"):
        saver.wait()
    assert saver.latest_step is None  # nothing recorded as written
    saver.close()


@pytest.mark.slow
def test_the_writer_counts_its_cpu_seconds_once_waited_for(tmp_path, tiny_mnist):
    trainer = Trainer(trainer_settings(batch_size=32), make_strategy().strategy, tiny_mnist)
    saver = Checkpointer(trainer, str(tmp_path), keep=3)
    run_steps(trainer, 2)
    saver.save(2, {})
    assert saver.writer_cpu_seconds == 0.0  # not yet waited for
    saver.wait()
    assert saver.writer_cpu_seconds > 0 and saver.latest_step == 2
    saver.close()


def test_a_checkpoint_that_cannot_be_written_is_reported_when_waited_for(tmp_path, tiny_mnist):
    trainer = Trainer(trainer_settings(batch_size=32), make_strategy().strategy, tiny_mnist)
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


@pytest.mark.slow
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
    assert stream.getvalue().splitlines() == [
        "SIGTERM received: stopping after the current steps and writing a checkpoint (Ctrl-C or SIGKILL quits at once)"
    ]
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


# --- a damaged index: the checkpoints themselves say where to resume ----------------------------------------------

SMALL = dict(
    max_steps=24,
    batch_size=16,
    log_every=2,
    eval_every=6,
    steps_per_loop=3,
    checkpoint_every=6,
    keep_checkpoints=3,
    jit_compile=False,
)


def small_config(logdir, name="r") -> TrainConfig:
    return TrainConfig(logdir=str(logdir), run_name=name, **SMALL)


def files_under(path) -> dict:
    """Every file under path, by relative name, with its bytes."""
    root = pathlib.Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def distmnist_warnings(caplog) -> list:
    """The warnings distmnist logged (through absl), not TensorFlow's about retracing, which tests that build
    many trainers in one process provoke."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "absl"]


def as_json(value):
    """value as JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def index_lines(index) -> list:
    return index.read_text().splitlines(keepends=True)


# What a crash, a full disk or a stray editor can leave of checkpoints/checkpoint, as ckpt-12, 18, 24 stay.
INDEX_DAMAGE = {
    "garbled": lambda index: index.write_bytes(b'model_checkpoint_path: "ckpt-2\x00\x01 all_model_'),
    "empty": lambda index: index.write_bytes(b""),
    "missing": lambda index: index.unlink(),
    # The first two lines: TensorFlow's manager then lists no checkpoint at all (no times), and started from step 0.
    "inconsistent": lambda index: index.write_text("".join(index_lines(index)[:2])),
    "stale": lambda index: index.write_text(index.read_text().replace('"ckpt-24"', '"ckpt-30"')),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_mnist):
    """A run of 24 steps with checkpoints at 12, 18 and 24 in a logdir (a resume must name the same one), a copy of
    it to start each test from, and its history."""
    from distmnist.runs.run import train
    from distmnist.runs.runsetup import set_up

    logdir = tmp_path_factory.mktemp("finished")
    _, history = train(set_up(small_config(logdir), make_strategy(), tiny_mnist))  # no export: not needed here
    pristine = tmp_path_factory.mktemp("pristine") / "r"
    shutil.copytree(logdir / "r", pristine)
    return logdir, pristine, history


@pytest.mark.parametrize("damage", INDEX_DAMAGE)
def test_a_damaged_index_resumes_from_the_newest_checkpoint_with_one_warning(tiny_mnist, finished_run, damage, caplog):
    from distmnist.runs.run import train
    from distmnist.runs.runsetup import set_up

    logdir, pristine, history = finished_run
    run_dir, index = logdir / "r", logdir / "r" / "checkpoints" / "checkpoint"
    shutil.rmtree(run_dir)
    shutil.copytree(pristine, run_dir)
    assert sorted(p.name for p in index.parent.glob("*.index")) == ["ckpt-12.index", "ckpt-18.index", "ckpt-24.index"]
    curves = {tag: values for tag, values in read_scalars(str(run_dir)).items() if tag in ("loss", "accuracy")}
    assert [s for s, _ in curves["loss"]] == list(range(0, 24, 2))
    INDEX_DAMAGE[damage](index)
    with caplog.at_level(logging.WARNING):
        run = set_up(small_config(logdir), make_strategy(), tiny_mnist)
    assert run.trainer.step == 24  # not 0: nothing is trained again, nothing the run logged is dropped
    warnings = distmnist_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith(f"the checkpoint index {index} is {damage}"), warnings
    assert warnings[0].endswith("resuming from ckpt-24, the newest checkpoint that verifies")
    assert as_json(run.history) == as_json(history)
    assert {tag: values for tag, values in read_scalars(str(run_dir)).items() if tag in curves} == curves
    state = tf.train.get_checkpoint_state(str(index.parent))  # written again, listing what is there
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-12", "ckpt-18", "ckpt-24"]
    _, again = train(run)  # nothing left to train: the run ends with its whole history
    assert as_json(again) == as_json(history)


def shaped_like_another_model(prefix: str, step: int) -> None:
    """A checkpoint numbered `step` holding `step`, whose kernels have other shapes than the MLP's."""

    class Other(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernels = [tf.Variable(tf.zeros([5, 3])) for _ in range(3)]
            self.biases = [tf.Variable(tf.zeros([3])) for _ in range(3)]

    tf.train.Checkpoint(model=Other(), step=tf.Variable(step, dtype=tf.int64)).write(prefix)


def plain_trainer(mnist) -> Trainer:
    return Trainer(trainer_settings(batch_size=32, jit_compile=False), make_strategy().strategy, mnist)


def test_a_checkpoint_is_used_only_when_it_verifies_and_pruning_spares_the_newer_ones(tmp_path, tiny_mnist, caplog):
    """With the index gone: ckpt-30 holds step 20 (files copied over), ckpt-20 has another model's shapes, so
    ckpt-10 is the one to resume from. The index is written again listing ckpt-10 alone; saving on with
    keep_checkpoints=1 prunes ckpt-10 but never ckpt-30, which is newer than the checkpoint restored."""
    first = plain_trainer(tiny_mnist)
    saver = Checkpointer(first, str(tmp_path), keep=3)
    saved = {}
    for step in (10, 20, 30):
        run_steps(first, 10)
        saver.save(step, {"loss": [[s, 1.0] for s in range(0, step, 10)], "accuracy": []})
        saved[step] = first.weights()
    saver.close()
    directory = tmp_path / "checkpoints"
    for path in directory.glob("ckpt-20.*"):
        shutil.copy(path, directory / path.name.replace("ckpt-20", "ckpt-30"))
    for path in directory.glob("ckpt-20.*"):
        path.unlink()
    shaped_like_another_model(str(directory / "ckpt-20"), 20)
    (directory / "checkpoint").unlink()
    newer = {name: data for name, data in files_under(directory).items() if name.startswith("ckpt-30")}

    resumed = first  # its weights are step 30's: the restore must bring back step 10's
    restorer = Checkpointer(resumed, str(tmp_path), keep=1)
    with caplog.at_level(logging.WARNING):
        assert restorer.restore_latest() == 10
    warnings = distmnist_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert (
        "is missing; resuming from ckpt-10, the newest checkpoint that verifies (ckpt-30: it holds step 20; "
        "ckpt-20: Received incompatible tensor with shape (3,) when attempting to restore variable with shape "
        "(512,)" in warnings[0]
    ), warnings
    for a, b in zip(resumed.weights(), saved[10], strict=True):
        np.testing.assert_array_equal(a, b)
    assert restorer.history(10) == {"loss": [[0, 1.0]], "accuracy": []}
    assert restorer.latest_step == 10
    resumed.resume_at(10)
    for step in (20, 40):
        run_steps(resumed, 10 if step == 20 else 20)
        restorer.save(step, restorer.history(10))
        restorer.wait()
    restorer.close()
    assert sorted(p.name for p in directory.glob("*.index")) == ["ckpt-30.index", "ckpt-40.index"]
    assert {name: data for name, data in files_under(directory).items() if name.startswith("ckpt-30")} == newer
    assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-40")


def test_history_that_ends_before_a_checkpoint_rules_it_out(tmp_path, tiny_mnist):
    """history.json is written before each checkpoint and records its step: a checkpoint past it would resume
    with a gap in the run's curves, so the one it reaches is used."""
    trainer = plain_trainer(tiny_mnist)
    saver = Checkpointer(trainer, str(tmp_path), keep=3)
    for step in (10, 20):
        run_steps(trainer, 10)
        saver.save(step, {"loss": [[s, 1.0] for s in range(0, step, 5)], "accuracy": [[0, 0.1]]})
    saver.close()
    history = tmp_path / "checkpoints" / "history.json"
    history.write_text(json.dumps({"loss": [[0, 1.0], [5, 1.0]], "accuracy": [[0, 0.1]], "step": 10}))
    (tmp_path / "checkpoints" / "checkpoint").write_text("")
    restorer = Checkpointer(trainer, str(tmp_path), keep=3)
    assert restorer.restore_latest() == 10
    assert restorer.history(10) == {"loss": [[0, 1.0], [5, 1.0]], "accuracy": [[0, 0.1]]}


def test_checkpoint_files_none_of_which_verifies_are_one_line_and_nothing_is_changed(tmp_path, tiny_mnist):
    trainer = plain_trainer(tiny_mnist)
    saver = Checkpointer(trainer, str(tmp_path), keep=3)
    for step in (10, 20):
        run_steps(trainer, 10)
        saver.save(step, {"loss": [], "accuracy": []})
    saver.close()
    directory = tmp_path / "checkpoints"
    for data in directory.glob("ckpt-*.data-*"):
        data.write_bytes(data.read_bytes()[:100])
    (directory / "checkpoint").write_text("garbage")
    before = files_under(tmp_path)
    with pytest.raises(
        UserError,
        match=r"^no checkpoint in .*checkpoints can be used \(ckpt-20: .+; ckpt-10: .+\); "
        r"nothing was changed: restore the folder from a copy, or start afresh with "
        r"--overwrite, which deletes this run$",
    ) as caught:
        Checkpointer(trainer, str(tmp_path), keep=3).restore_latest()
    assert "\n" not in str(caught.value)
    assert files_under(tmp_path) == before


@pytest.mark.slow  # two in-process runs that train
@pytest.mark.parametrize("spoil", ["truncated", "another step", "history behind"])
def test_a_damaged_index_and_a_spoilt_newest_checkpoint_resume_from_the_one_before_bit_identical(
    tmp_path, tiny_mnist, spoil, caplog
):
    whole = train_and_evaluate(small_config(tmp_path, "whole"), choice=make_strategy(), mnist=tiny_mnist)
    train_and_evaluate(small_config(tmp_path), choice=make_strategy(), mnist=tiny_mnist)
    directory = tmp_path / "r" / "checkpoints"
    (directory / "checkpoint").write_text("model_checkpoint_path: ")  # cut short
    if spoil == "truncated":
        data = next(directory.glob("ckpt-24.data-*"))
        data.write_bytes(data.read_bytes()[:1000])
    elif spoil == "another step":
        for path in directory.glob("ckpt-18.*"):
            shutil.copy(path, directory / path.name.replace("ckpt-18", "ckpt-24"))
    else:
        history = json.loads((directory / "history.json").read_text())
        (directory / "history.json").write_text(
            json.dumps(
                {
                    "loss": [p for p in history["loss"] if p[0] < 18],
                    "accuracy": [p for p in history["accuracy"] if p[0] <= 18],
                    "step": 18,
                }
            )
        )
    (tmp_path / "r" / "run.json").unlink()
    with caplog.at_level(logging.WARNING):
        again = train_and_evaluate(small_config(tmp_path), choice=make_strategy(), mnist=tiny_mnist)
    warnings = distmnist_warnings(caplog)
    assert (
        len(warnings) == 1 and "resuming from ckpt-18, the newest checkpoint that verifies (ckpt-24: " in warnings[0]
    ), warnings
    assert again["global_step"] == 24 and again["timings"]["first_call_s"] > 0  # it trained steps 18 to 24
    assert_same_weights(saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "r"))
    assert as_json(again["history"]) == as_json(whole["history"])
    resumed, uninterrupted = read_scalars(str(tmp_path / "r")), read_scalars(str(tmp_path / "whole"))
    assert {tag: [s for s, _ in values] for tag, values in resumed.items()} == {
        tag: [s for s, _ in values] for tag, values in uninterrupted.items()
    }  # every step once
    assert resumed["loss"] == uninterrupted["loss"] and resumed["accuracy"] == uninterrupted["accuracy"]


@pytest.mark.slow
def test_the_entry_point_recovers_a_garbled_index_with_one_warning_line(tmp_path, tiny_npz_dir, tiny_mnist):
    settings = dict(
        max_steps=60,
        batch_size=16,
        checkpoint_every=20,
        eval_every=20,
        log_every=10,
        steps_per_loop=10,
        jit_compile=False,
    )
    train_and_evaluate(
        TrainConfig(logdir=str(tmp_path), run_name="r", data_dir=tiny_npz_dir, **settings),
        choice=make_strategy(),
        mnist=tiny_mnist,
    )  # what the same command would have done
    directory = tmp_path / "r" / "checkpoints"
    (directory / "checkpoint").write_bytes(b"\x89garbled\x00")
    data = next(directory.glob("ckpt-60.data-*"))
    data.write_bytes(data.read_bytes()[:1000])
    (tmp_path / "r" / "run.json").unlink()
    again = run_module(
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={tmp_path}",
        "--run_name=r",
        *(f"--{name}={str(value).lower()}" for name, value in settings.items()),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [line for line in again.stderr.splitlines() if "dataset.py" not in line]  # where MNIST came from
    assert len(lines) == 1 and re.search(
        rf"\] the checkpoint index {directory}/checkpoint is garbled "
        r"\(not text\); resuming from ckpt-40, the newest checkpoint that "
        r"verifies \(ckpt-60: .+\)$",
        lines[0],
    ), again.stderr
    assert "resuming from step 40," in again.stdout
    history = json.loads((tmp_path / "r" / "run.json").read_text())["history"]
    assert [s for s, _ in history["loss"]] == list(range(0, 60, 10))


@pytest.mark.parametrize("relative", [True, False])
def test_the_index_names_its_checkpoints_for_a_run_directory_given_either_way(
    tmp_path, tiny_mnist, caplog, monkeypatch, relative
):
    """--logdir=logs (the default) is relative: the index must name ckpt-N, as TensorFlow's own tools read it, and a
    resume must find it whole, without the damaged-index warning."""
    monkeypatch.chdir(tmp_path)
    run_dir = os.path.join("logs", "r") if relative else str(tmp_path / "logs" / "r")
    trainer = plain_trainer(tiny_mnist)
    saver = Checkpointer(trainer, run_dir, keep=2)
    for step in (10, 20, 30):
        run_steps(trainer, 10)
        saver.save(step, {"loss": [[step, 1.0]], "accuracy": []})
    saver.close()
    index = (tmp_path / "logs" / "r" / "checkpoints" / "checkpoint").read_text()
    assert re.findall(r'all_model_checkpoint_paths: "([^"]*)"', index) == ["ckpt-20", "ckpt-30"], index
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) == os.path.join(
        run_dir, "checkpoints", "ckpt-30"
    )
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(plain_trainer(tiny_mnist), run_dir, keep=2).restore_latest() == 30
    assert distmnist_warnings(caplog) == []

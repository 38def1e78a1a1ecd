"""Checkpoints of a run: the model and the step, every checkpoint_every steps and at the end, with the logged
history beside them, so that the same command resumes exactly where the last checkpoint left off.

The input position is not stored: both input paths derive it from the seed and the step (Trainer.resume_at).
tf.train.CheckpointManager records a checkpoint in the index (checkpoints/checkpoint) only after all its files
are written, so a checkpoint cut short by a crash is never picked up; a latest one that cannot be read is
reported and the one before it used. A checkpoint is used only when it verifies: it restores every variable
(TensorFlow checks each one's shape and type), the step it holds is its file's number, and history.json, written
before it, reaches its step. An index that is missing, empty, garbled or names a latest checkpoint that is not
there, while ckpt-* files are, is not trusted: the newest ckpt-* that verifies is used, with one warning line.
Whenever the checkpoint used is not the index's latest, the index is written again listing it and the
checkpoints before it, never one after it, which keep_checkpoints would otherwise prune.

Saving does not copy and does not go through TensorFlow's Python saver each time: save() reads every value the
checkpoint holds in one compiled call (TensorFlow's own serialisation of the checkpoint, traced once: the same
keys and object graph as tf.train.Checkpoint.write), and a thread writes those tensors with one SaveV2 op and
records them in the index, while the next training call runs. The read tensors are a consistent snapshot without a
copy: a variable whose old value is still held is copied by the update that replaces it (TensorFlow's
copy-on-write), once at most. SaveV2 writes ckpt-N.data-* and then ckpt-N.index, each under a temporary name
renamed when complete, so a ckpt-N.index is a whole checkpoint; the index names it only after that, then older
ones beyond keep_checkpoints are deleted. A save waits for the one before it; wait() (and latest_step, close)
waits for the last one and reports a write that failed. TensorFlow's own asynchronous checkpointing
(CheckpointOptions(enable_async=True)) took about twice the CPU a save: its copies, and its Python
saver, run again on each save in its writer thread.
"""

import json
import os
import re
import shutil
import tempfile
import threading
import time

import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState
from tensorflow.python.training.saving import saveable_object

from distmnist.common import files, logfilters, safeio
from distmnist.common.errors import RunFailed, UserError
from distmnist.runs import rundir
from distmnist.training.trainer import Trainer

HISTORY = "history.json"
INDEX = "checkpoint"  # tf.train.CheckpointManager's
MAX_INDEX_BYTES = 1 << 20  # an index lists keep_checkpoints names: a few hundred bytes
_CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.index")


class Checkpointer:
    """Saves and restores one trainer's model and step under <run_dir>/checkpoints."""

    def __init__(self, trainer: Trainer, run_dir: str | None, keep: int):
        # Workers other than the chief must take part in saving but keep nothing: a temporary folder.
        self.directory = os.path.join(run_dir, "checkpoints") if run_dir else tempfile.mkdtemp(prefix="distmnist-ckpt-")
        self._scratch = None if run_dir else self.directory
        self._same = f"the same command with --run_name={os.path.basename(run_dir)}" if run_dir else "the same command"
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        extra = {"loss_scale": trainer.loss_scale} if trainer.loss_scale else {}  # mixed_float16's state
        self._checkpoint = tf.train.Checkpoint(model=trainer.model, step=self._step, **extra)
        self._keep = keep
        # The save counter is made now, so that every checkpoint holds it as tf.train.CheckpointManager's did: a
        # checkpoint restored creates it, and assert_existing_objects_matched wants a value for it.
        self._checkpoint.save_counter  # noqa: B018  the property creates it
        self._snapshot = tf.function(self._values)
        # A damaged index is not read: restore_latest lists the checkpoint it resumes from, writing the index again.
        self._listed, self._damage = ([], None) if self._scratch else read_index(self.directory)
        logfilters.quiet_checkpoint_writer()
        # (step, writer thread, its outcome) of a save not yet waited for
        self._pending: tuple[int, threading.Thread, dict] | None = None
        self.seconds = 0.0  # what saving has cost the caller: the snapshots, and the waits for the writes
        self.writer_cpu_seconds = 0.0  # the CPU seconds the writer threads took, up to the last write waited for

    def _values(self, step: tf.Tensor) -> dict:
        """The step and the save counter moved on, then every value the checkpoint holds, by its key (the object
        graph under its own key): one call a save, traced once."""
        self._step.assign(step)
        self._checkpoint.save_counter.assign_add(1)
        serialized = self._checkpoint._saver._gather_serialized_tensors(None)[0]  # noqa: SLF001  TF's own keys
        values = {}
        for tensors in serialized.values():
            for key, tensor in tensors.items():
                if isinstance(tensor, dict):  # a sliced variable (partitioned): none in this model
                    raise ValueError(f"checkpoint value {key} is sliced; the saver writes whole tensors only")
                if isinstance(tensor, saveable_object.SaveSpec):  # a value read when saving (a variable's)
                    tensor = tensor.tensor
                values[key] = tf.identity(tensor)
        return values

    def save(self, step: int, history: dict) -> None:
        """Writes the history first, then starts the checkpoint: a checkpoint never lacks the history up to it."""
        self.wait()  # times itself
        start = time.perf_counter()
        if not self._scratch:
            try:
                os.makedirs(self.directory, exist_ok=True)
                files.write_json(os.path.join(self.directory, HISTORY), {**history, "step": step})
            except OSError as exc:
                raise self._failed(step, exc.strerror or str(exc)) from None
        values = self._snapshot(tf.constant(step, tf.int64))
        keys = sorted(values)
        outcome: dict = {}
        writer = threading.Thread(
            target=self._write,
            args=(step, keys, [values[k] for k in keys], outcome),
            name=f"distmnist-checkpoint-{step}",
        )
        writer.start()
        self._pending = (step, writer, outcome)
        self.seconds += time.perf_counter() - start

    def _write(self, step: int, keys: list, values: list, outcome: dict) -> None:
        """The writer thread: the files, then the index naming them, then the pruning; outcome["error"] when the
        files or the index could not be written, outcome["raise"] for anything else (wait() raises it)."""
        name = f"ckpt-{step}"
        outcome["cpu_s"] = -time.thread_time()
        try:
            self._write_files(name, keys, values)
        except (OSError, tf.errors.OpError) as exc:
            detail = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
            outcome["error"] = (str(detail).strip().splitlines() or [type(exc).__name__])[0]
        except BaseException as exc:  # a fault of ours, not the disk's: raised in the caller by wait(), never lost
            outcome["raise"] = exc
        finally:
            outcome["cpu_s"] += time.thread_time()

    def _write_files(self, name: str, keys: list, values: list) -> None:
        """The checkpoint's files, the index naming them, then the pruning of what the index no longer names (a
        file that will not go is left: the index no longer names it)."""
        with tf.device("/cpu:0"):
            tf.raw_ops.SaveV2(
                prefix=os.path.join(self.directory, name),
                tensor_names=keys,
                shape_and_slices=[""] * len(keys),
                tensors=values,
            )
        listed = [n for n in self._listed if n != name] + [name]
        kept, pruned = listed[-self._keep :], listed[: -self._keep]
        self._record(kept)
        self._listed = kept
        for old in pruned:  # after the index stopped naming them: a kill in between leaves files, never a gap
            for path in [os.path.join(self.directory, old + ".index")] + tf.io.gfile.glob(
                os.path.join(self.directory, old + ".data-?????-of-?????")
            ):
                try:
                    os.remove(path)
                except OSError:
                    pass

    def _record(self, names: list) -> None:
        """Writes the index (TensorFlow's format, as its CheckpointManager writes it) listing names, the last the
        latest."""
        now = time.time()
        # As paths: TensorFlow takes a bare name as relative to the working directory, not to a relative directory,
        # and would write '../../../ckpt-40' for logs/r/checkpoints; with save_relative_paths the index names them.
        paths = [os.path.join(self.directory, name) for name in names]
        checkpoint_management.update_checkpoint_state_internal(
            self.directory,
            paths[-1],
            all_model_checkpoint_paths=paths,
            all_model_checkpoint_timestamps=[now] * len(names),
            last_preserved_timestamp=now - 1,
            save_relative_paths=True,
        )

    def wait(self) -> None:
        """Returns when the last save is written and recorded; RunFailed when it could not be written."""
        if self._pending is None:
            return
        start = time.perf_counter()
        (step, writer, outcome), self._pending = self._pending, None
        writer.join()
        self.seconds += time.perf_counter() - start
        self.writer_cpu_seconds += outcome.get("cpu_s", 0.0)
        if "raise" in outcome:
            raise outcome["raise"]
        if "error" in outcome:
            raise self._failed(step, outcome["error"])

    def _failed(self, step: int, why: str) -> RunFailed:
        return RunFailed(
            f"the checkpoint of step {step} could not be written to {self.directory}: {why}; free "
            f"space or fix the folder's permissions, then run {self._same} to resume from the checkpoint "
            "before it"
        )

    @property
    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, None when there is none (a save in flight is waited for)."""
        self.wait()
        return self._latest()

    def _latest(self) -> int | None:
        return _number(self._listed[-1]) if self._listed and not self._damage else None

    def restore_latest(self) -> int:
        """Restores the newest checkpoint that verifies and returns its step (0 when there is none). With a sound
        index, the checkpoints it lists, newest first (one that does not verify is reported and the one before it
        tried); with a damaged one, every ckpt-* in the folder. UserError when there are checkpoints and none
        verifies: nothing is changed then."""
        history = self._history_file()
        history_step = history.get("step") if history else None
        # The index's own list, not the manager's: the manager leaves out checkpoints whose recorded time is ahead
        # of this machine's clock (a run moved from another machine), and would then start again from step 0.
        candidates = (
            checkpoint_files(self.directory)
            if self._damage
            else [(_number(name), os.path.join(self.directory, name)) for name in self._listed]
        )
        skipped: list[str] = []
        for number, path in reversed(candidates):
            why = self._restore(path, number, history_step)
            if why is None:
                if self._damage:
                    logging.warning(
                        "the checkpoint index %s is %s; resuming from %s, the newest checkpoint that verifies%s",
                        os.path.join(self.directory, INDEX),
                        self._damage,
                        os.path.basename(path),
                        f" ({'; '.join(skipped)[:300]})" if skipped else "",
                    )
                if self._damage or skipped:
                    self._list_up_to(number, candidates)
                return number
            skipped.append(f"{os.path.basename(path)}: {why}")
            if not self._damage:
                logging.warning("checkpoint %s cannot be used (%s); trying the one before it", path, why)
        if candidates:
            raise UserError(
                f"no checkpoint in {self.directory} can be used ({'; '.join(skipped)[:500]}); nothing "
                "was changed: restore the folder from a copy, or start afresh with --overwrite, which "
                "deletes this run"
            )
        return 0

    def _restore(self, path: str, number: int, history_step: int | None) -> str | None:
        """Restores one checkpoint; None when it verifies, else why not."""
        try:
            self._checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as exc:  # noqa: BLE001  a damaged file fails in many ways (OpError, IndexError, ...)
            return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        step = int(self._step.numpy())
        if step != number:
            return f"it holds step {step}"
        if isinstance(history_step, int) and history_step < number:
            return f"{HISTORY} ends at step {history_step}"
        return None

    def _list_up_to(self, number: int, candidates: list) -> None:
        """Writes the index again, listing the restored checkpoint last and those before it (what keep_checkpoints
        may prune), never one after it: those that did not verify are left as they are until the run's own
        checkpoint of their step replaces them."""
        kept = [os.path.basename(path) for n, path in candidates if n <= number]
        try:
            self._record(kept)
        except (OSError, tf.errors.OpError) as exc:
            detail = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
            raise RunFailed(
                f"the checkpoint index {os.path.join(self.directory, INDEX)} could not be written "
                f"({detail}); free space or fix the folder's permissions, then run {self._same} to "
                "resume"
            ) from None
        self._damage = None
        self._listed = kept

    def _history_file(self) -> dict | None:
        """history.json as written (None when there is none); UserError when it is not a distmnist history."""
        path = os.path.join(self.directory, HISTORY)
        if self._scratch or not os.path.exists(path):
            return None
        try:
            history = json.loads(safeio.read_path(path, safeio.MAX_JSON_BYTES))
            rundir.kept_history(history, 0)  # the shape a history has
        except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            raise UserError(
                f"{path} is not a distmnist history ({type(exc).__name__}: {exc}); start afresh with "
                "--overwrite, which deletes this run"
            ) from None
        return history

    def history(self, step: int) -> dict:
        """The logged values up to a restored step (what the killed run logged after it is dropped)."""
        history = self._history_file()
        return rundir.kept_history(history, step) if history else {"loss": [], "accuracy": []}

    def close(self) -> None:
        """Waits for the last save, then removes a worker's scratch folder."""
        try:
            self.wait()
        finally:
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)


def _number(path: str) -> int:
    return int(path.rpartition("-")[2])


def checkpoint_files(directory: str) -> list[tuple[int, str]]:
    """(number, path prefix) of every ckpt-N in the folder that has its .index file, oldest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    numbers = sorted(int(m.group(1)) for m in map(_CHECKPOINT_FILE.fullmatch, names) if m)
    return [(n, os.path.join(directory, f"ckpt-{n}")) for n in numbers]


def read_index(directory: str) -> tuple[list[str], str | None]:
    """The checkpoints the folder's index lists (names, oldest first), and why it cannot be trusted while ckpt-*
    files are there (None: it can, or there are none). TensorFlow's CheckpointManager writes an index that names
    its latest checkpoint last among all it keeps, each with a time, each of them in this folder."""
    if not checkpoint_files(directory):
        return [], None
    path = os.path.join(directory, INDEX)
    if not os.path.lexists(path):
        return [], "missing"
    try:
        data = safeio.read_path(path, MAX_INDEX_BYTES)
    except (OSError, UserError) as exc:
        return [], f"unreadable ({getattr(exc, 'strerror', None) or 'larger than an index is'})"
    if not data.strip():
        return [], "empty"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return [], "garbled (not text)"
    state = CheckpointState()
    try:
        text_format.Parse(text, state)
    except text_format.ParseError as exc:
        return [], f"garbled ({str(exc).splitlines()[0][:100]})"
    listed = list(state.all_model_checkpoint_paths)
    if (
        not state.model_checkpoint_path
        or not listed
        or listed[-1] != state.model_checkpoint_path
        or len(state.all_model_checkpoint_timestamps) != len(listed)
    ):
        return [], "inconsistent (not as TensorFlow's CheckpointManager writes it)"
    for name in listed:
        if os.path.dirname(name) or not _CHECKPOINT_FILE.fullmatch(name + ".index"):
            return [], f"inconsistent (it names {name[:100]!r})"
    if not os.path.exists(os.path.join(directory, listed[-1] + ".index")):
        return [], f"stale (its latest, {listed[-1]}, is not there)"
    # An older one that is gone was pruned: the manager rewrites the index after deleting.
    return [name for name in listed if os.path.exists(os.path.join(directory, name + ".index"))], None

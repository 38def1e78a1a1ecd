"""A run directory's life: the plan (new, resume or overwrite), opening it, and what a resumed run keeps of what
the interrupted one logged. Every rule of resumption is here."""

import json
import os
import shutil

import tensorflow as tf
from tensorflow.core.util import event_pb2

from distmnist.common import files, safeio
from distmnist.common.errors import UserError

RUN_CONFIG = "run_config.json"
# Flags that may differ between a run and its resumption; every other flag must match.
RESUMABLE = ("overwrite", "data_dir", "require_gpus")
ADDED_LATER = {"precision": "float32"}  # settings newer than some runs: what those runs trained with


def plan(logdir: str, run_name: str, flags: dict) -> str:
    """Decides, before any expensive work and without touching anything, what to do with <logdir>/<run_name>:

    "new" (it does not exist), "resume" (a distmnist run started with the same flags), or "overwrite"
    (--overwrite on a distmnist run). Anything else is a UserError: nothing is ever reused silently.
    """
    if "://" in logdir:
        raise UserError(f"--logdir must be a local folder, got {logdir}; copy finished runs to a bucket afterwards")
    run_dir = os.path.join(logdir, run_name)
    files.check_creatable(logdir, run_dir)
    if not os.path.exists(run_dir):
        return "new"
    saved_path = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.exists(saved_path):
        raise UserError(f"run directory {run_dir} already exists and is not a distmnist run; choose another "
                        "--run_name")
    if flags.get("overwrite"):
        return "overwrite"
    try:
        saved = json.loads(safeio.read_path(saved_path, safeio.MAX_JSON_BYTES))
    except (OSError, ValueError) as exc:
        raise UserError(f"{saved_path} cannot be read ({exc}); start afresh with --overwrite") from None
    if not isinstance(saved, dict):
        raise UserError(f"{saved_path} is not a distmnist run's settings; start afresh with --overwrite")
    leaving = safeio.links_leaving(run_dir)
    if leaving:  # resuming rewrites the run's files in place: a link would have them written elsewhere
        raise UserError(f"run directory {run_dir} holds a link that leads out of it ({leaving[0]}); remove it, or "
                        "start afresh with --overwrite")
    for name, value in flags.items():
        started = saved.get(name, ADDED_LATER.get(name))
        if name not in RESUMABLE and started != value:
            raise UserError(f"run directory {run_dir} was started with --{name}={started}, not {value}; "
                            "rerun with the same flags to resume it, or pass --overwrite to start afresh")
    return "resume"


def open_dir(logdir: str, run_name: str, flags: dict, plan: str) -> str:
    """Carries out plan()'s plan; a new run directory records its flags for later resumption."""
    run_dir = os.path.join(logdir, run_name)
    if plan == "resume":
        return run_dir
    try:
        if plan == "overwrite":
            shutil.rmtree(run_dir)
        os.makedirs(logdir, exist_ok=True)
        os.mkdir(run_dir)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir} ({exc.strerror}); choose a writable --logdir") from None
    files.write_json(os.path.join(run_dir, RUN_CONFIG), flags)
    return run_dir


def kept(logged_step: int, resumed_step: int, evaluation: bool) -> bool:
    """Whether a resumed run keeps what was logged at logged_step: a training step's values up to the step before
    the checkpoint (the resumed run logs that step again), evaluations up to the checkpoint's own step (they ran
    before the checkpoint was written)."""
    return logged_step <= resumed_step if evaluation else logged_step < resumed_step


def kept_history(history: dict, resumed_step: int) -> dict:
    """The logged history ({"loss": [[step, value]], "accuracy": [...]}) a run resumed at resumed_step keeps."""
    return {"loss": [p for p in history["loss"] if kept(p[0], resumed_step, evaluation=False)],
            "accuracy": [p for p in history["accuracy"] if kept(p[0], resumed_step, evaluation=True)]}


# Logged at evaluations, which happen at a checkpoint's own step too; every other tag is a training step's,
# except what a fresh run logs once about itself, which a resumed run keeps.
EVALUATION_TAGS = ("accuracy", "mistakes")
RUN_TAGS = ("config", "_hparams_/experiment", "_hparams_/session_start_info")


def _event_files(events_dir: str) -> list:
    return sorted(tf.io.gfile.glob(f"{events_dir.rstrip('/')}/events.out.tfevents.*"))


def open_events_dir(events_dir: str, plan: str) -> None:
    """An --events_dir holds one run's events, as a run directory does: created when missing, emptied of event
    files when the run starts afresh with --overwrite (a folder or a tf.io.gfile URL such as gs://)."""
    try:
        tf.io.gfile.makedirs(events_dir)
        if plan == "overwrite":
            for path in _event_files(events_dir):
                tf.io.gfile.remove(path)
    except tf.errors.OpError as exc:
        raise UserError(f"cannot write TensorBoard events to {events_dir} ({exc.message}); choose a writable "
                        "--events_dir") from None


def drop_events_after(run_dir: str, step: int) -> int:
    """Rewrites a run's event files (in its run directory or --events_dir, a folder or a tf.io.gfile URL)
    without what an interrupted run logged after its checkpoint at `step` (training steps from `step` on,
    evaluations after it), and without a record cut short by the kill, so a resumed run's TensorBoard curves
    have each step once. Returns the number of events dropped."""
    dropped = 0
    for path in _event_files(run_dir):
        records, changed = [], False
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                tags = [v.tag for v in event.summary.value]
                evaluation = any(tag in EVALUATION_TAGS for tag in tags)
                if tags and not kept(event.step, step, evaluation) and not any(tag in RUN_TAGS for tag in tags):
                    dropped += 1
                    changed = True
                else:
                    records.append(record.numpy())
        except tf.errors.DataLossError:
            changed = True  # a record cut short by the kill: drop it
        if changed:
            tmp = f"{run_dir.rstrip('/')}/.tmp-resume-{os.path.basename(path)}"
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in records:
                    writer.write(record)
            tf.io.gfile.rename(tmp, path, overwrite=True)
    return dropped

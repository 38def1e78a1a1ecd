"""A run directory's life: the plan (new, restart, resume or overwrite), opening it, and what a resumed run keeps
of what the interrupted one logged. Every rule of resumption is here. No TensorFlow here: the plan is made before
TensorFlow is imported (events.py applies the rule to a resumed run's event files).

A run directory is distmnist's when it holds run_config.json, and a run only once it holds something of value: a
checkpoint, run.json or a SavedModel. One that holds neither (a start that failed before its first checkpoint)
is started afresh by the next command whatever its flags, so that it never locks its name; --overwrite is needed,
and advised, only where a run would be deleted. distmnist deletes only the files it writes there."""

import json
import os
import shutil

from distmnist.common import files, safeio
from distmnist.common.config import PATH_SETTINGS
from distmnist.common.errors import UserError

RUN_CONFIG = "run_config.json"
# Flags that may differ between a run and its resumption; every other flag must match (paths as places).
RESUMABLE = ("overwrite", "data_dir", "require_gpus")
ADDED_LATER = {"precision": "float32"}  # settings newer than some runs: what those runs trained with
# What distmnist writes in a run directory: the names, and the prefixes of the event files and temporary names.
WRITTEN = {
    RUN_CONFIG,
    "run.json",
    "checkpoints",
    "saved_model",
    "plugins",
    "train.svg",
    "test.svg",
    "confusion.svg",
    "mistakes.png",
    "calibration.svg",
}
WRITTEN_PREFIXES = ("events.out.tfevents.", ".tmp-", ".old-")
OVERWRITE = "pass --overwrite to delete it (its checkpoints, events and results) and start afresh"


def written_by_distmnist(name: str) -> bool:
    """Whether an entry of a run directory is one distmnist writes there."""
    return name in WRITTEN or name.startswith(WRITTEN_PREFIXES)


def holds_a_run(run_dir: str) -> bool:
    """Whether a distmnist run directory holds something of value: a checkpoint (its index file, written last),
    run.json or a SavedModel."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    try:
        names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    except OSError:
        names = []
    return any(n.startswith("ckpt-") and n.endswith(".index") for n in names) or any(
        os.path.lexists(os.path.join(run_dir, n)) for n in ("run.json", "saved_model")
    )


def plan(logdir: str, run_name: str, flags: dict) -> str:
    """Decides, before any expensive work and without touching anything, what to do with <logdir>/<run_name>:

    "new" (it does not exist, or is an empty folder), "restart" (a distmnist run directory that holds no run:
    cleared and started afresh), "resume" (a run started with the same flags, paths compared as places), or
    "overwrite" (--overwrite on a run). Anything else is a UserError: nothing is ever reused silently, and no file
    distmnist did not write is deleted.
    """
    if "://" in logdir:
        raise UserError(f"--logdir must be a local folder, got {logdir}; copy finished runs to a bucket afterwards")
    run_dir = os.path.join(logdir, run_name)
    files.check_creatable(logdir, run_dir)
    if not os.path.lexists(run_dir):
        return "new"
    if os.path.islink(run_dir) or not os.path.isdir(run_dir):
        raise UserError(f"{run_dir} exists and is not a folder; choose another --run_name")
    entries = os.listdir(run_dir)
    if RUN_CONFIG not in entries:
        if all(name.startswith(".tmp-") for name in entries):
            return "new"  # empty, or what a start cut short before its settings were written left
        raise UserError(f"run directory {run_dir} already exists and is not a distmnist run; choose another --run_name")
    foreign = sorted(name for name in entries if not written_by_distmnist(name))
    if not holds_a_run(run_dir):
        if foreign:
            raise UserError(
                f"run directory {run_dir} holds no checkpoint, and files distmnist did not write "
                f"({', '.join(foreign[:3])}); move them out to start it afresh, or choose another "
                "--run_name"
            )
        return "restart"
    if flags.get("overwrite"):
        if foreign:
            raise UserError(
                f"--overwrite would delete run directory {run_dir}, which holds files distmnist did not "
                f"write ({', '.join(foreign[:3])}); move them out first, or choose another --run_name"
            )
        return "overwrite"
    saved_path = os.path.join(run_dir, RUN_CONFIG)
    try:
        saved = json.loads(safeio.read_path(saved_path, safeio.MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise UserError(f"{saved_path} cannot be read ({' '.join(str(exc).split())}); {OVERWRITE}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{saved_path} is not a distmnist run's settings; {OVERWRITE}")
    leaving = safeio.links_leaving(run_dir)
    if leaving:  # resuming rewrites the run's files in place: a link would have them written elsewhere
        raise UserError(
            f"run directory {run_dir} holds a link that leads out of it ({leaving[0]}); remove it, or {OVERWRITE}"
        )
    for name, value in flags.items():
        started = saved.get(name, ADDED_LATER.get(name))
        same = (
            files.same_place(started, value)
            if name in PATH_SETTINGS and isinstance(started, (str, type(None)))
            else started == value
        )
        if name not in RESUMABLE and not same:
            shown = started if not isinstance(started, str) or started.isprintable() else repr(started)  # one line
            then = f"with --{name}={shown}" if started is not None else f"without --{name}"
            now = "without it" if value is None else f"with --{name}={value}" if started is None else value
            raise UserError(
                f"run directory {run_dir} was started {then}, not {now}; rerun {then} to resume it, or {OVERWRITE}"
            )
    return "resume"


def open_dir(logdir: str, run_name: str, flags: dict, plan: str) -> str:
    """Carries out plan()'s plan; a new run directory records its flags for later resumption. A run directory
    started afresh (restart, overwrite) loses the files distmnist wrote there, and no other. Where the settings
    cannot be written, the folder this made is removed again (OSError for a want of room, else UserError)."""
    run_dir = os.path.join(logdir, run_name)
    if plan == "resume":
        return run_dir
    made = False
    try:
        if plan in ("restart", "overwrite"):
            for name in os.listdir(run_dir):
                if written_by_distmnist(name):
                    _remove(os.path.join(run_dir, name))
        os.makedirs(logdir, exist_ok=True)
        if not os.path.isdir(run_dir):
            os.mkdir(run_dir)
            made = True
        files.write_json(os.path.join(run_dir, RUN_CONFIG), flags)
    except OSError as exc:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        if files.no_room(exc):
            raise
        raise UserError(f"cannot create run directory {run_dir} ({exc.strerror}); choose a writable --logdir") from None
    return run_dir


def _remove(path: str) -> None:
    """A file, a link (not what it leads to) or a folder."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def kept(logged_step: int, resumed_step: int, evaluation: bool) -> bool:
    """Whether a resumed run keeps what was logged at logged_step: a training step's values up to the step before
    the checkpoint (the resumed run logs that step again), evaluations up to the checkpoint's own step (they ran
    before the checkpoint was written)."""
    return logged_step <= resumed_step if evaluation else logged_step < resumed_step


def kept_history(history: dict, resumed_step: int) -> dict:
    """The logged history ({"loss": [[step, value]], "accuracy": [...]}) a run resumed at resumed_step keeps."""
    return {
        "loss": [p for p in history["loss"] if kept(p[0], resumed_step, evaluation=False)],
        "accuracy": [p for p in history["accuracy"] if kept(p[0], resumed_step, evaluation=True)],
    }

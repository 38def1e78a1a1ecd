"""Where a run writes, checked before any work and before TensorFlow is imported: its run directory under
--logdir, --events_dir and --export_dir (and a sweep's folder, sweep.py). distmnist replaces or deletes only what
it wrote: an export it marked as its own, a folder holding this run's events, files of its own run directories.
Paths are compared as places (normalised, links resolved), so `runs/` and `./runs` are `runs`. URLs (gs://) are
the store's to judge: they are written with TensorFlow's file system as they are. No TensorFlow here."""

import json
import os

from distmnist.common import files
from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError
from distmnist.runs import rundir

EXPORT_MARKER = "distmnist_export.json"  # in every SavedModel distmnist writes: replacing it later is allowed
EVENTS_MARKER = ".distmnist_events.json"  # in an --events_dir: the run directory whose events it holds
SAVED_MODEL_FILES = {"saved_model.pb", "fingerprint.pb", "variables", "assets"}  # what tf.saved_model.save writes
EVENT_FILE = "events.out.tfevents."


def _shown(names: list) -> str:
    return ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def is_replaceable_export(path: str, legacy: bool = False) -> bool:
    """Whether an export may replace what is at `path`: nothing, an empty folder, or a folder holding only a
    SavedModel's files and distmnist's marker (legacy: a SavedModel's files without the marker, as distmnist wrote
    into run directories before it had one)."""
    if not os.path.lexists(path):
        return True
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    entries = set(os.listdir(path))
    if not entries:
        return True
    return entries <= SAVED_MODEL_FILES | {EXPORT_MARKER} and (
        EXPORT_MARKER in entries or (legacy and "saved_model.pb" in entries)
    )


def _inside_a_run(path: str) -> str | None:
    """The distmnist run directory that path is in or is (the nearest folder above it with run_config.json)."""
    folder = files.place(path)
    while True:
        if os.path.isfile(os.path.join(folder, rundir.RUN_CONFIG)):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _creatable(flag: str, path: str) -> None:
    """UserError unless path is a writable folder or can be made as one (its nearest existing ancestor is; OSError
    EROFS on a read-only filesystem)."""
    existing = files.nearest_existing(files.place(path))
    if existing:
        files.refuse_read_only(existing)
    if existing and not (os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"--{flag}={path}: {existing} is not a writable folder; choose another --{flag}")


def check(config: TrainConfig, cwd: str | None = None) -> None:
    """UserError naming the first output of this run that cannot be used: a place that is not a writable folder,
    one that holds what distmnist did not write and would replace, or outputs that overlap; OSError EROFS for
    one on a read-only filesystem (to be made writable again, not chosen anew)."""
    cwd = cwd or os.getcwd()
    run_dir = os.path.join(config.logdir, config.run_name or "")
    try:
        if config.export_dir and not files.is_url(config.export_dir):
            _check_export(config.export_dir, config.logdir, run_dir, config.events_dir, cwd)
        if config.events_dir and not files.is_url(config.events_dir):
            _check_events(config.events_dir, config.logdir, run_dir)
    except OSError as exc:  # a folder that cannot be read: what it holds is unknown
        if files.no_room(exc):
            raise
        raise UserError(
            f"cannot look into {exc.filename} ({exc.strerror}); choose another output folder, or make it readable"
        ) from None


def _check_export(export_dir: str, logdir: str, run_dir: str, events_dir: str | None, cwd: str) -> None:
    where = f"--export_dir={export_dir}"
    if files.within(cwd, export_dir):
        raise UserError(
            f"{where} is the working directory or holds it; an export replaces its folder: choose a "
            "folder of its own (a new one, or an earlier export)"
        )
    if files.within(logdir, export_dir) or files.within(export_dir, logdir):
        raise UserError(
            f"{where} overlaps --logdir={logdir}, where runs live (the SavedModel is in the run "
            f"directory already); choose a folder outside it"
        )
    if events_dir and (files.within(events_dir, export_dir) or files.within(export_dir, events_dir)):
        raise UserError(f"{where} overlaps --events_dir={events_dir}; choose folders apart")
    run = _inside_a_run(export_dir)
    if run:
        raise UserError(f"{where} is inside the distmnist run directory {run}; choose a folder outside it")
    if os.path.islink(export_dir):
        raise UserError(f"{where} is a link; give the folder it leads to, {files.place(export_dir)}")
    if os.path.lexists(export_dir) and not os.path.isdir(export_dir):
        raise UserError(f"{where} is a file; an export is a folder: choose another --export_dir")
    if not is_replaceable_export(export_dir):
        foreign = sorted(set(os.listdir(export_dir)) - SAVED_MODEL_FILES - {EXPORT_MARKER})
        what = (
            f"files distmnist did not write ({_shown(foreign)})"
            if foreign
            else "a SavedModel distmnist did not mark as its own"
        )
        raise UserError(
            f"{where} holds {what}; an export replaces its folder, and distmnist replaces only its own "
            "exports: choose a new or empty folder"
        )
    parent = os.path.dirname(files.place(export_dir))
    if not os.path.isdir(parent):
        raise UserError(f"{where}: its folder {parent} does not exist; create it, or choose another --export_dir")
    files.refuse_read_only(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{where}: its folder {parent} is not writable; choose another --export_dir")


def _check_events(events_dir: str, logdir: str, run_dir: str) -> None:
    where = f"--events_dir={events_dir}"
    if files.same_place(events_dir, run_dir):
        return  # where the events go anyway
    if files.within(logdir, events_dir):
        raise UserError(
            f"{where} is --logdir={logdir} or holds it; TensorBoard's events of one run go in a folder of their own"
        )
    if files.within(events_dir, run_dir):
        raise UserError(
            f"{where} is inside the run directory {run_dir}; leave --events_dir unset to keep the "
            "events there, or choose a folder outside it"
        )
    run = _inside_a_run(events_dir)
    if run:
        raise UserError(f"{where} is inside the distmnist run directory {run}; choose a folder outside it")
    if os.path.lexists(events_dir) and not os.path.isdir(events_dir):
        raise UserError(f"{where} is a file; choose a folder")
    if os.path.isdir(events_dir):
        entries = os.listdir(events_dir)
        foreign = [
            e for e in entries if not (e.startswith(EVENT_FILE) or e.startswith(".tmp-resume-") or e == EVENTS_MARKER)
        ]
        if foreign:
            raise UserError(
                f"{where} holds files that are not TensorBoard events ({_shown(foreign)}); choose a new "
                "or empty folder for this run's events"
            )
        if any(e.startswith(EVENT_FILE) for e in entries) and not events_owner(events_dir, run_dir):
            raise UserError(
                f"{where} holds the events of another run; choose a new or empty folder for this run's events"
            )
    _creatable("events_dir", events_dir)


def events_owner(events_dir: str, run_dir: str) -> bool:
    """Whether the events in events_dir are run_dir's: its marker names run_dir, or (a run from before the marker)
    run_dir's run_config.json names events_dir."""
    for path, key in (
        (os.path.join(events_dir, EVENTS_MARKER), "run_dir"),
        (os.path.join(run_dir, rundir.RUN_CONFIG), "events_dir"),
    ):
        try:
            with open(path) as f:
                named = json.loads(f.read(1 << 20)).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(named, str) and files.same_place(named, events_dir if key == "events_dir" else run_dir):
            return True
    return False


def events_marker(run_dir: str) -> dict:
    """What an --events_dir's marker holds."""
    return {"run_dir": files.place(run_dir)}


def check_sweep_folder(logdir: str) -> None:
    """UserError unless a sweep may write into logdir: a writable folder (or one it can make) whose sweep.json,
    sweep.svg and sweep-logs/, which a sweep replaces, are a sweep's where they exist."""
    where = f"--logdir={logdir}"
    if os.path.lexists(logdir) and not os.path.isdir(logdir):
        raise UserError(f"{where} is a file; a sweep's folder holds its runs: choose another --logdir")
    _creatable("logdir", logdir)
    report = os.path.join(logdir, "sweep.json")
    is_sweeps = False
    if os.path.lexists(report):
        try:
            with open(report) as f:
                value = json.loads(f.read(64 << 20))
            is_sweeps = isinstance(value, dict) and isinstance(value.get("points"), list) and "swept" in value
        except (OSError, ValueError):
            pass
        if not is_sweeps:
            raise UserError(
                f"{report} is not a distmnist sweep's report, and a sweep writes its own there; choose another --logdir"
            )
    logs = os.path.join(logdir, "sweep-logs")
    if os.path.lexists(logs) and (os.path.islink(logs) or not os.path.isdir(logs)):
        raise UserError(f"{logs} is not the folder of a sweep's logs; choose another --logdir")
    if os.path.lexists(os.path.join(logdir, "sweep.svg")) and not (is_sweeps or os.path.isdir(logs)):
        raise UserError(
            f"{os.path.join(logdir, 'sweep.svg')} is not a distmnist sweep's, and a sweep writes its own "
            "there; choose another --logdir"
        )

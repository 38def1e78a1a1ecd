"""Run directories and atomic writes: a reader sees the old file or the new one, never half of one."""

import datetime
import json
import os
import shutil
import tempfile

from distmnist.errors import UserError


def default_run_name() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


RUN_CONFIG = "run_config.json"
# Flags that may differ between a run and its resumption; every other flag must match.
RESUMABLE = ("overwrite", "data_dir")


def plan_run_dir(logdir: str, run_name: str, flags: dict) -> str:
    """Decides, before any expensive work and without touching anything, what to do with <logdir>/<run_name>:

    "new" (it does not exist), "resume" (a distmnist run started with the same flags), or "overwrite"
    (--overwrite on a distmnist run). Anything else is a UserError: nothing is ever reused silently.
    """
    if "://" in logdir:
        raise UserError(f"--logdir must be a local folder, got {logdir}; copy finished runs to a bucket afterwards")
    run_dir = os.path.join(logdir, run_name)
    existing = logdir
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not (os.path.isdir(existing) and os.access(existing, os.W_OK)):
        raise UserError(f"cannot create run directory {run_dir}: {existing} is not a writable folder; "
                        "choose another --logdir")
    if not os.path.exists(run_dir):
        return "new"
    saved_path = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.exists(saved_path):
        raise UserError(f"run directory {run_dir} already exists and is not a distmnist run; choose another "
                        "--run_name")
    if flags.get("overwrite"):
        return "overwrite"
    try:
        with open(saved_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{saved_path} cannot be read ({exc}); start afresh with --overwrite") from None
    for name, value in flags.items():
        if name not in RESUMABLE and saved.get(name) != value:
            raise UserError(f"run directory {run_dir} was started with --{name}={saved.get(name)}, not {value}; "
                            "rerun with the same flags to resume it, or pass --overwrite to start afresh")
    return "resume"


def open_run_dir(logdir: str, run_name: str, flags: dict, plan: str) -> str:
    """Carries out plan_run_dir's plan; a new run directory records its flags for later resumption."""
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
    write_json(os.path.join(run_dir, RUN_CONFIG), flags)
    return run_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str, write) -> None:
    """Calls write(binary_file) on a temporary file beside `path`, then renames it into place."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def write_json(path: str, value) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def replace_dir(path: str, fill) -> None:
    """Calls fill(tmp_dir) on a fresh folder beside `path`, then swaps it into place."""
    parent = os.path.dirname(path) or "."
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(path))
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

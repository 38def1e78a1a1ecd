"""Run directories and atomic writes: a reader sees the old file or the new one, never half of one."""

import datetime
import json
import os
import shutil
import tempfile

from distmnist.errors import UserError


def default_run_name() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_run_dir_free(logdir: str, run_name: str) -> str:
    """Fails early, before any expensive work, if the run directory cannot be created; returns its path."""
    if "://" in logdir:
        raise UserError(f"--logdir must be a local folder, got {logdir}; copy finished runs to a bucket afterwards")
    run_dir = os.path.join(logdir, run_name)
    if os.path.exists(run_dir):
        raise UserError(f"run directory {run_dir} already exists; choose another --run_name")
    existing = logdir
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not (os.path.isdir(existing) and os.access(existing, os.W_OK)):
        raise UserError(f"cannot create run directory {run_dir}: {existing} is not a writable folder; "
                        "choose another --logdir")
    return run_dir


def create_run_dir(logdir: str, run_name: str) -> str:
    """Makes <logdir>/<run_name>; an existing one is never reused silently."""
    run_dir = check_run_dir_free(logdir, run_name)
    try:
        os.makedirs(logdir, exist_ok=True)
        os.mkdir(run_dir)
    except FileExistsError:
        raise UserError(f"run directory {run_dir} already exists; choose another --run_name") from None
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir} ({exc.strerror}); choose a writable --logdir") from None
    return run_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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

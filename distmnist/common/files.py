"""Atomic writes: a reader sees the old file or the new one, never half of one; which paths are URLs; whether a
folder can be made where a run wants it."""

import json
import os
import shutil
import tempfile

from distmnist.common.errors import UserError


def is_url(path: str) -> bool:
    """A tf.io.gfile URL (gs://, s3://, ...) rather than a local path."""
    return "://" in path


def nearest_existing(path: str) -> str:
    """path if it exists, else its nearest ancestor that does ('' when none does)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_creatable(logdir: str, run_dir: str) -> None:
    """UserError unless logdir exists, or can be made, as a writable folder."""
    existing = nearest_existing(logdir)
    if existing and not (os.path.isdir(existing) and os.access(existing, os.W_OK)):
        raise UserError(f"cannot create run directory {run_dir}: {existing} is not a writable folder; "
                        "choose another --logdir")


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
    """Calls fill(tmp_dir) on a fresh folder beside `path`, then swaps it into place. Where folders cannot be
    renamed (Cloud Storage FUSE, as Vertex AI mounts buckets under /gcs, refuses by default), the finished folder
    is copied into place instead: complete when this returns, but not atomic."""
    parent = os.path.dirname(path) or "."
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        try:
            _swap_into_place(tmp, path, parent)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(tmp, path)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: str, path: str, parent: str) -> None:
    if os.path.exists(path):
        old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(path))
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    else:
        os.rename(tmp, path)

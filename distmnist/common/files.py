"""Atomic writes: a reader sees the old file or the new one, never half of one; which paths are URLs; where a path
leads (places, not strings); whether a folder can be made where a run wants it; which failed writes are for want of
room or of write access."""

import errno
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import IO, Any

from distmnist.common.errors import UserError


def is_url(path: str) -> bool:
    """A tf.io.gfile URL (gs://, s3://, ...) rather than a local path."""
    return "://" in path


def place(path: str) -> str:
    """Where a path leads: absolute, normalised, links resolved (a URL as given, without trailing slashes)."""
    return path.rstrip("/") if is_url(path) else os.path.realpath(path)


def same_place(a: str | None, b: str | None) -> bool:
    """Whether two paths (None: no path) name one place now: `runs/`, `./runs` and `runs` do."""
    if a is None or b is None or is_url(a) != is_url(b):
        return a == b
    try:
        return a == b or place(a) == place(b)
    except ValueError:  # a NUL or a lone surrogate (a damaged run_config.json): no place, so not this one
        return False


def within(path: str, folder: str) -> bool:
    """Whether path is folder itself or inside it, as places."""
    path, folder = place(path), place(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def nearest_existing(path: str) -> str:
    """path if it exists, else its nearest ancestor that does ('' when none does)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def refuse_read_only(path: str) -> None:
    """OSError EROFS naming path when it is on a read-only filesystem: not a wrong path, one to make writable again
    (os.access says only "not writable")."""
    try:
        read_only = os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return
    if read_only:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)


def check_creatable(logdir: str, run_dir: str) -> None:
    """UserError unless logdir exists, or can be made, as a writable folder (OSError EROFS on a read-only
    filesystem)."""
    existing = nearest_existing(logdir)
    if existing:
        refuse_read_only(existing)
    if existing and not (os.path.isdir(existing) and os.access(existing, os.W_OK)):
        raise UserError(
            f"cannot create run directory {run_dir}: {existing} is not a writable folder; choose another --logdir"
        )


# Writes that fail for want of room or of write access: the user frees space (or remounts) and runs again.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def no_room(error: OSError) -> bool:
    return error.errno in NO_ROOM


def no_room_in(text: str) -> OSError | None:
    """The OSError a message of TensorFlow's file system describes ("<path>; No space left on device": it carries
    the C library's words, not the number), None when it names none of NO_ROOM."""
    for number in NO_ROOM:
        words = os.strerror(number)
        if words in text:
            named = re.search(rf"(\S+); {words}", text)
            return OSError(number, words, named.group(1) if named else None)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Calls write(binary_file) on a temporary file beside `path`, then renames it into place. An OSError names
    `path`, not the temporary file."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-" + os.path.basename(path)[:64])
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, path) from None
        raise


def write_bytes(path: str, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def write_json(path: str, value: Any) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def replace_dir(path: str, fill: Callable[[str], object], replaceable: Callable[[str], bool]) -> None:
    """Calls fill(tmp_dir) on a fresh folder beside `path`, then swaps it into place. What is at `path` is replaced
    only if replaceable(path) says so, asked once the new folder is complete (FileExistsError naming it otherwise),
    and stays whole until then: it is renamed aside, the new folder renamed into place, and only then removed (put
    back if the second rename fails). Where folders cannot be renamed (Cloud Storage FUSE, as Vertex AI mounts
    buckets under /gcs, refuses by default), the new folder's files are copied over the old one's, each renamed
    into place, and the old one's others removed: complete when this returns, but not atomic."""
    parent = os.path.dirname(path) or "."
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path)[:64])
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        if os.path.lexists(path) and not replaceable(path):
            raise FileExistsError(errno.EEXIST, "holds files distmnist did not write; nothing was replaced", path)
        try:
            _swap_into_place(tmp, path, parent)
        except OSError as exc:
            if no_room(exc):
                raise
            _copy_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: str, path: str, parent: str) -> None:
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(path)[:64])
    os.rmdir(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _copy_into_place(tmp: str, path: str) -> None:
    """The new folder's files over the old one's (which replace_dir has found replaceable), each renamed into
    place; files the new folder does not have are then removed."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(tmp):
        source, target = os.path.join(tmp, name), os.path.join(path, name)
        if os.path.isdir(source):
            _copy_into_place(source, target)
        else:
            write_with(target, functools.partial(_copy_file, source))
    for name in set(os.listdir(path)) - set(os.listdir(tmp)):
        gone = os.path.join(path, name)
        shutil.rmtree(gone) if os.path.isdir(gone) and not os.path.islink(gone) else os.remove(gone)


def _copy_file(source: str, f: IO[bytes]) -> None:
    with open(source, "rb") as s:
        shutil.copyfileobj(s, f)

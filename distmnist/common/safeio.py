"""Reading files that may be hostile, within bounds: what a header declares (an array's shape, a picture's size,
a gzip or zip member's contents) is checked before anything is allocated or decompressed, and nothing is ever
unpickled. Each refusal is a UserError naming the file and the bound. No TensorFlow here."""

import io
import os
import zipfile
import zlib
from typing import BinaryIO, List, Tuple

import numpy as np
from numpy.lib import format as npy_format

from distmnist.common.errors import UserError

MiB = 2 ** 20
# A data file read whole, or what a compressed one holds: MNIST's largest (train-images-idx3-ubyte) is 45 MiB.
MAX_DATA_BYTES = 256 * MiB
# One array a .npy/.npz header declares: MNIST's training images are 45 MiB, as float32 180 MiB.
MAX_ARRAY_BYTES = 256 * MiB
# A picture's declared width x height: 24 megapixels (a 6000x4000 photo), a tenth of what Pillow refuses.
MAX_PICTURE_PIXELS = 24_000_000
# A JSON file of a run (run_config.json, history.json): a long run's history is a few MiB.
MAX_JSON_BYTES = 64 * MiB


class TooLarge(UserError):
    """A file, or what its header declares, is beyond the bound for its kind."""


def _size(nbytes: int) -> str:
    return f"{nbytes / MiB:,.0f} MiB" if nbytes >= MiB else f"{nbytes:,} bytes"


def read_bounded(fileobj: BinaryIO, name: str, limit: int = MAX_DATA_BYTES) -> bytes:
    """The whole file, refused past `limit` bytes (read no further than that)."""
    data = fileobj.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{name}: larger than {_size(limit)}, far more than this kind of file holds; is it the "
                       "right file?")
    return data


def read_path(path: str, limit: int = MAX_DATA_BYTES) -> bytes:
    with open(path, "rb") as f:
        return read_bounded(f, path, limit)


def gunzip(data: bytes, name: str, limit: int = MAX_DATA_BYTES) -> bytes:
    """A gzip file's contents, refused once they pass `limit` bytes (a small file can declare gigabytes)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UserError(f"{name}: not a readable gzip file ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"{name}: unpacks to more than {_size(limit)}, far more than MNIST's files hold")
    if not inflater.eof:
        raise UserError(f"{name}: not a readable gzip file (it ends before its data does)")
    return out


def _check_npy_header(fileobj: BinaryIO, name: str, limit: int) -> Tuple[tuple, np.dtype]:
    """The (shape, dtype) a .npy header declares, refused before any data is read when the array would pass
    `limit` bytes or holds Python objects (which only pickle can load)."""
    try:
        version = npy_format.read_magic(fileobj)
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = reader(fileobj)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{name}: not a readable numpy array ({exc})") from None
    if dtype.hasobject:
        raise UserError(f"{name}: holds Python objects, which only pickle can load, and distmnist never unpickles; "
                        "save plain numbers")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes > limit:
        raise TooLarge(f"{name}: its header declares {dtype} {list(shape)}, {_size(nbytes)}, more than "
                       f"{_size(limit)}; split it into smaller files")
    return shape, dtype


def check_arrays(source, name: str, limit: int = MAX_ARRAY_BYTES) -> List[Tuple[str, tuple]]:
    """Checks every array of a .npy or .npz file (a path, or the file's bytes) from its header: (member name,
    shape) for each. A zip member that declares more bytes than `limit` is refused before it is inflated."""
    opened = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with opened as f:
        magic = f.read(6)
        f.seek(0)
        if magic == npy_format.MAGIC_PREFIX:
            return [(name, _check_npy_header(f, name, limit)[0])]
        try:
            archive = zipfile.ZipFile(f)
        except zipfile.BadZipFile as exc:
            kind = ".npz file" if name.endswith(".npz") else ".npy or .npz file"
            raise UserError(f"{name}: not a readable {kind} ({exc}); replace it or remove it") from None
        with archive:
            found = []
            for member in archive.infolist():
                where = f"{name}:{member.filename}"
                if member.file_size > limit + 4096:  # what the zip says it unpacks to (the header's few KiB)
                    raise TooLarge(f"{where}: unpacks to {_size(member.file_size)}, more than {_size(limit)}")
                with archive.open(member) as data:
                    found.append((where, _check_npy_header(data, where, limit)[0]))
            return found


def check_picture_size(width: int, height: int, name: str, limit: int = MAX_PICTURE_PIXELS) -> None:
    """Refuses a picture whose declared size is past `limit` pixels, before it is decoded."""
    if width * height > limit:
        raise TooLarge(f"{name}: declares {width}x{height} pixels ({width * height / 1e6:,.0f} megapixels), more "
                       f"than the {limit / 1e6:,.0f} a picture of a digit needs; scale it down")


def inside(path: str, root: str) -> bool:
    """Whether path, with every link resolved, stays within root."""
    root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def links_leaving(root: str) -> List[str]:
    """The entries under root that are symbolic links resolving outside it (a run directory's files are written
    and rewritten in place: such a link would have them written elsewhere)."""
    leaving = []
    for folder, dirs, names in os.walk(root):
        for entry in dirs + names:
            path = os.path.join(folder, entry)
            if os.path.islink(path) and not inside(path, root):
                leaving.append(path)
    return leaving

"""Reading files that may be hostile, within bounds: what a header declares (an array's shape, a picture's size,
a gzip or zip member's contents) is checked before anything is allocated or decompressed, nothing is ever
unpickled, and only regular files are opened (a FIFO would block the open, a device's open can act on it). Each
refusal is a UserError naming the file and the bound. No TensorFlow here."""

import dataclasses
import functools
import io
import lzma
import math
import os
import stat
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, BinaryIO, TypeVar

import numpy as np
from numpy.lib import format as npy_format

from distmnist.common.errors import UserError

T = TypeVar("T")

MiB = 2**20
# A data file read whole, or what a compressed one holds: MNIST's largest (train-images-idx3-ubyte) is 45 MiB.
MAX_DATA_BYTES = 256 * MiB
# What one .npy/.npz file's arrays hold in all once read: MNIST's are 52 MiB (its training images 45 MiB).
MAX_ARRAY_BYTES = 256 * MiB
# A picture's declared width x height: 24 megapixels (a 6000x4000 photo), a tenth of what Pillow refuses.
MAX_PICTURE_PIXELS = 24_000_000
# A JSON file of a run (run_config.json, history.json): a long run's history is a few MiB.
MAX_JSON_BYTES = 64 * MiB
# A zip's table of contents, which Python's zipfile reads whole into an object per member: 8 MiB lists about
# 100,000 members, a .npz of MNIST four.
MAX_ZIP_DIRECTORY = 8 * MiB
# A .npy header (a Python dict literal): numpy's own default bound, checked here before the header is read.
MAX_NPY_HEADER = 10_000
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
# What zipfile, its decompressors and a short read raise for a damaged archive or member.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,
    NotImplementedError,
    struct.error,
)


class TooLarge(UserError):
    """A file, or what its header declares, is beyond the bound for its kind."""


class NotAFile(UserError):
    """The path names a folder, a FIFO, a device or a socket: refused without reading it."""


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_a_file(path: str, mode: int) -> NotAFile:
    kind = next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
    return NotAFile(f"{path}: is {kind}, not a file")


def open_regular(path: str) -> BinaryIO:
    """The file at `path` opened for reading, if it is a regular file (links followed); NotAFile, without opening
    it, if it is not; OSError as open() raises it (no such file, permission denied). Opened non-blocking, so that
    a FIFO swapped in after the check cannot hang the open either; fstat then checks what was opened."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_a_file(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _size(nbytes: int) -> str:
    return f"{nbytes / MiB:,.0f} MiB" if nbytes >= MiB else f"{nbytes:,} bytes"


def read_bounded(fileobj: BinaryIO, name: str, limit: int = MAX_DATA_BYTES) -> bytes:
    """The whole file, refused past `limit` bytes (read no further than that)."""
    data = fileobj.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(
            f"{name}: larger than {_size(limit)}, far more than this kind of file holds; is it the right file?"
        )
    return data


def read_path(path: str, limit: int = MAX_DATA_BYTES) -> bytes:
    """A regular file's bytes (NotAFile otherwise), refused past `limit`; OSError as open() and read() raise it."""
    with open_regular(path) as f:
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


def unreadable(name: str, exc: OSError) -> UserError:
    """The one line for an OSError met while reading the file `name`."""
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{name}: no such file")
    return UserError(f"{name}: cannot be read ({exc.strerror or exc})")


@dataclasses.dataclass(frozen=True)
class ArrayHeader:
    """What the header of a .npy file, or of a .npz member, declares."""

    name: str  # the file, or file:member.npy for a member of a .npz
    key: str  # numpy's name for a .npz member: its file name without .npy ('' for a .npy file)
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # where the data starts, after the header

    @property
    def count(self) -> int:
        return math.prod(self.shape)  # Python integers: no overflow, whatever the header declares

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def _npy_header(f: BinaryIO, name: str, key: str) -> ArrayHeader:
    """The header at the start of f, its length checked before the header is read."""
    try:
        start = f.read(8)
        if len(start) < 8 or start[:6] != npy_format.MAGIC_PREFIX:
            raise ValueError("it does not start as a .npy file does")
        version = (start[6], start[7])
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
        field = "<H" if version == (1, 0) else "<I"
        length_bytes = f.read(struct.calcsize(field))
        (length,) = struct.unpack(field, length_bytes)
        if length > MAX_NPY_HEADER:
            raise ValueError(f"a header of {length:,} bytes, more than numpy's bound of {MAX_NPY_HEADER:,}")
        header = f.read(length)
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        with warnings.catch_warnings():  # numpy's note on headers written by Python 2: read all the same
            warnings.simplefilter("ignore")
            shape, fortran_order, dtype = reader(io.BytesIO(length_bytes + header))
    # numpy parses the header's dict as Python: brackets left open are tokenize's error, other text ast's.
    except (ValueError, EOFError, struct.error, tokenize.TokenError, SyntaxError, RecursionError) as exc:
        raise UserError(f"{name}: not a readable numpy array ({' '.join(str(exc).split())})") from None
    if dtype.hasobject:
        raise UserError(
            f"{name}: holds Python objects, which only pickle can load, and distmnist never unpickles; "
            "save plain numbers"
        )
    if dtype.itemsize == 0 or min(shape, default=0) < 0:
        raise UserError(f"{name}: not a readable numpy array (its header declares {dtype} {list(shape)})")
    return ArrayHeader(name, key, tuple(int(d) for d in shape), dtype, fortran_order, 8 + len(length_bytes) + length)


def _check_size(header: ArrayHeader, limit: int, available: int) -> None:
    """Refuses an array past `limit` bytes, or one whose data the file (`available` bytes after the header)
    cannot hold."""
    if header.nbytes > limit:
        raise TooLarge(
            f"{header.name}: its header declares {header.dtype} {list(header.shape)}, "
            f"{_size(header.nbytes)}, more than {_size(limit)}; split it into smaller files"
        )
    if header.nbytes > available:
        raise UserError(
            f"{header.name}: its header declares {header.nbytes:,} bytes of data, but {available:,} "
            "follow it (truncated or corrupt)"
        )


def _read_data(f: BinaryIO, header: ArrayHeader) -> np.ndarray:
    """The array whose data starts at f's position, read in pieces into one allocation of its declared size."""
    array = np.empty(header.count, header.dtype)
    buffer = array.view(np.uint8).data
    filled = 0
    while filled < header.nbytes:
        piece = f.read(min(header.nbytes - filled, 16 * MiB))
        if not piece:
            raise UserError(f"{header.name}: ends before its data does (truncated or corrupt)")
        buffer[filled : filled + len(piece)] = piece
        filled += len(piece)
    try:
        return array.reshape(header.shape[::-1]).T if header.fortran_order else array.reshape(header.shape)
    except ValueError as exc:  # a dtype with a shape of its own (a sub-array) does not fit the declared shape
        raise UserError(f"{header.name}: not a readable numpy array ({exc})") from None


def _data_after_header(f: BinaryIO, header: ArrayHeader) -> np.ndarray:
    f.read(header.offset)  # a zip member's stream: read past the header again
    return _read_data(f, header)


def _in_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, where: str, read: Callable[[IO[bytes]], T]) -> T:
    """read(member's stream), what zipfile and its decompressors raise turned into one line naming the member."""
    if member.flag_bits & 0x1:
        raise UserError(f"{where}: is encrypted, and distmnist reads no passwords; save it without one")
    if member.compress_type not in _ZIP_METHODS:
        raise UserError(
            f"{where}: is compressed with zip method {member.compress_type}, which Python's zipfile "
            "cannot read; save it with numpy.savez or numpy.savez_compressed"
        )
    try:
        with archive.open(member) as data:
            result = read(data)
            data.read(1)  # reaches the member's end, where zipfile checks its CRC
            return result
    except _ZIP_ERRORS + (OSError,) as exc:
        raise UserError(f"{where}: cannot be read ({' '.join(str(exc).split())})") from None


def _zip_directory_size(f: BinaryIO) -> int:
    """The size of the zip's central directory, as the end record that ZipFile itself reads declares it."""
    end_record = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # the very record ZipFile's constructor reads
    return end_record[zipfile._ECD_SIZE] if end_record else 0  # type: ignore[attr-defined]


def _read_npz(
    f: BinaryIO, name: str, limit: int, check: Callable[[list[ArrayHeader]], None] | None
) -> list[tuple[ArrayHeader, np.ndarray]]:
    """read_arrays for a zip: its directory's size, then each member's declared size and header, then the data."""
    directory = _zip_directory_size(f)
    if directory > MAX_ZIP_DIRECTORY:
        raise TooLarge(
            f"{name}: its zip directory is {_size(directory)}, more than {_size(MAX_ZIP_DIRECTORY)}: far "
            "more members than a .npz of pictures holds"
        )
    try:
        archive = zipfile.ZipFile(f)
    except _ZIP_ERRORS as exc:
        kind = ".npz file" if name.endswith(".npz") else ".npy or .npz file"
        raise UserError(f"{name}: not a readable {kind} ({exc}); replace it or remove it") from None
    with archive:
        members, headers, total = archive.infolist(), [], 0
        for member in members:
            shown = member.filename if member.filename.isprintable() else repr(member.filename)  # a line break, ...
            where = f"{name}:{shown}"
            if member.file_size > limit + MAX_NPY_HEADER + 16:  # what the zip says the member unpacks to
                raise TooLarge(f"{where}: unpacks to {_size(member.file_size)}, more than {_size(limit)}")
            key = shown[:-4] if shown.endswith(".npy") else shown
            header = _in_member(archive, member, where, functools.partial(_npy_header, name=where, key=key))
            _check_size(header, limit, member.file_size - header.offset)
            headers.append(header)
            total += header.nbytes
            if total > limit:
                raise TooLarge(
                    f"{name}: its arrays declare {_size(total)} or more in all, more than {_size(limit)}; "
                    "split it into smaller files"
                )
        if check:
            check(headers)
        return [
            (header, _in_member(archive, member, header.name, functools.partial(_data_after_header, header=header)))
            for member, header in zip(members, headers, strict=True)
        ]


def read_arrays(
    source: str | bytes,
    name: str,
    limit: int = MAX_ARRAY_BYTES,
    check: Callable[[list[ArrayHeader]], None] | None = None,
) -> list[tuple[ArrayHeader, np.ndarray]]:
    """Every array of a .npy or .npz file (a path, or the file's bytes), as (its header, the array).

    Every header is read and checked before any data is read or inflated: a member that cannot be opened
    (encrypted, compressed by a method zipfile lacks), arrays of Python objects, an array past `limit` bytes or
    arrays past it in all, data shorter than declared; then check(headers), the caller's own rules (shapes, counts).
    Each refusal, and each error of the file or a member, is one UserError naming it."""
    try:
        with io.BytesIO(source) if isinstance(source, bytes) else open_regular(source) as f:
            if f.read(6) != npy_format.MAGIC_PREFIX:
                return _read_npz(f, name, limit, check)
            f.seek(0)
            header = _npy_header(f, name, "")
            _check_size(header, limit, f.seek(0, io.SEEK_END) - header.offset)
            if check:
                check([header])
            f.seek(header.offset)
            return [(header, _read_data(f, header))]
    except OSError as exc:
        raise unreadable(name, exc) from None


def check_picture_size(width: int, height: int, name: str, limit: int = MAX_PICTURE_PIXELS) -> None:
    """Refuses a picture whose declared size is past `limit` pixels, before it is decoded."""
    if width * height > limit:
        raise TooLarge(
            f"{name}: declares {width}x{height} pixels ({width * height / 1e6:,.0f} megapixels), more "
            f"than the {limit / 1e6:,.0f} a picture of a digit needs; scale it down"
        )


def inside(path: str, root: str) -> bool:
    """Whether path, with every link resolved, stays within root."""
    root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def links_leaving(root: str) -> list[str]:
    """The entries under root that are symbolic links resolving outside it (a run directory's files are written
    and rewritten in place: such a link would have them written elsewhere)."""
    leaving = []
    for folder, dirs, names in os.walk(root):
        for entry in dirs + names:
            path = os.path.join(folder, entry)
            if os.path.islink(path) and not inside(path, root):
                leaving.append(path)
    return leaving

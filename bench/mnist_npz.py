"""The bench's copy of MNIST for its processes of their own: written once by the bench (so that every contender
trains on the same arrays, whatever the source), read in each process as distmnist reads any MNIST file."""

import os

import numpy as np

from distmnist.common import safeio
from distmnist.common.errors import UserError
from distmnist.data import dataset


def write(mnist: dataset.Mnist, folder: str) -> str:
    """The arrays of mnist as folder/mnist.npz; its path."""
    path = os.path.join(folder, "mnist.npz")
    np.savez(path, **mnist.arrays())
    return path


def read(path: str) -> tuple:
    """(x_train, y_train, x_test, y_test) from the bench's npz, read as distmnist reads any MNIST file
    (dataset.read_npz: bounded, each array's size checked from its header, never unpickled); UserError otherwise."""
    try:
        data = safeio.read_path(path)
    except OSError as exc:
        raise UserError(f"cannot read --npz={path}: {exc.strerror or exc}") from None
    arrays = dataset.read_npz(data, path)
    return tuple(arrays[key] for key in dataset.KEYS)

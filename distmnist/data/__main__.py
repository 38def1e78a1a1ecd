"""Fetch and verify MNIST ahead of a run (the first source that works, as distmnist.train finds it).

python -m distmnist.data [--data_dir=...]
"""

from absl import flags

from distmnist.common import cli
from distmnist.data import dataset


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "Folder (or gs:// URL) with mnist.npz or the four IDX files.")


def main() -> None:
    print(dataset.describe(dataset.load(flags.FLAGS.data_dir)))


if __name__ == "__main__":
    cli.run(main, prog="distmnist.data", define_flags=define_flags)

"""Recognise digits in pictures with a trained distmnist model.

  python -m distmnist.predict --model=logs/RUN IMAGE...              # digit and probability per image
  python -m distmnist.predict --model=logs/RUN/saved_model --json a.png b.jpg digits.npy
  python -m distmnist.predict --model=logs/RUN --show_preprocessed=seen.png photo.jpg

Images: PNG, JPEG, BMP, ... of any size and colour, dark-on-light or light-on-dark, and .npy/.npz arrays
([H, W] or [N, H, W]). Each is prepared as MNIST's digits were (see data/images.py). A file that cannot be
used gets one line on stderr; the others are still predicted, and the exit status is 2.
"""

import json
import os
import sys

import numpy as np
from absl import flags

from distmnist.common import cli, files, progress
from distmnist.common.errors import UserError
from distmnist.data import images
from distmnist.startup import tfquiet  # none imports TensorFlow: bad files fail fast

FLAGS = flags.FLAGS
PROGRESS_FROM = 20  # files: more than this draw a progress bar on a terminal's stderr


def define_flags() -> None:
    flags.DEFINE_string("model", None, "A SavedModel written by distmnist.train, or its run directory.")
    flags.DEFINE_boolean("json", False, "One JSON object per image and line: path, digit, probability, top_k.")
    flags.DEFINE_integer("top_k", 3, "How many most likely digits to list per image (1-10).")
    flags.DEFINE_string("show_preprocessed", None, "Write the 28x28 images the model saw, as a PNG grid, here.")


def model_path(path: str) -> str:
    """The SavedModel folder for --model: the folder itself or <run dir>/saved_model."""
    for candidate in (path, os.path.join(path, "saved_model")):
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise UserError(f"--model={path} is neither a SavedModel nor a run directory holding saved_model/; "
                    "pass logs/RUN from a finished distmnist.train run")


def main(paths) -> int:
    if not FLAGS.model:
        raise UserError("--model is required: a run directory (logs/RUN) or its saved_model folder")
    if not paths:
        raise UserError("name at least one image: python -m distmnist.predict --model=logs/RUN IMAGE...")
    if not 1 <= FLAGS.top_k <= 10:
        raise UserError(f"--top_k must be between 1 and 10, got {FLAGS.top_k}")
    saved_model = model_path(FLAGS.model)

    names, prepared, failures = [], [], 0
    bar = progress.Bar(len(paths), "reading", sys.stderr) if len(paths) > PROGRESS_FROM else None
    for done, path in enumerate(paths, 1):
        try:
            for name, gray in images.load(path):
                prepared.append(images.to_mnist(gray, name))
                names.append(name)
        except images.ImageError as exc:
            (bar.say if bar else lambda line: print(line, file=sys.stderr))(f"distmnist.predict: error: {exc}")
            failures += 1
        if bar:
            bar.update(done)
    if bar:
        bar.close()

    if names:
        tf = tfquiet.import_tensorflow()
        serve = tf.saved_model.load(saved_model).signatures["serving_default"]
        probabilities = serve(images=tf.constant(np.stack(prepared)))["probabilities"].numpy()
        for name, p in zip(names, probabilities):
            top = np.argsort(-p, kind="stable")[:FLAGS.top_k]
            if FLAGS.json:
                print(json.dumps({"path": name, "digit": int(top[0]), "probability": float(p[top[0]]),
                                  "top_k": [{"digit": int(d), "probability": float(p[d])} for d in top]}))
            else:
                others = ", ".join(f"{d} {p[d]:.1%}" for d in top[1:])
                print(f"{name}: {top[0]} ({p[top[0]]:.1%})" + (f"  then {others}" if others else ""))
        if FLAGS.show_preprocessed:
            files.write_bytes(FLAGS.show_preprocessed, images.grid_png(
                prepared, [str(int(np.argmax(p))) for p in probabilities],
                title="what the model saw, with its answers"))
            print(f"wrote {FLAGS.show_preprocessed}")
    return 2 if failures else 0


if __name__ == "__main__":
    cli.run(main, prog="distmnist.predict", takes_args=True, define_flags=define_flags)

"""Recognise digits in pictures with a trained distmnist model.

  python -m distmnist.predict --model=logs/RUN IMAGE...              # digit and probability per image
  python -m distmnist.predict --model=logs/RUN/saved_model --json a.png b.jpg digits.npy
  python -m distmnist.predict --model=logs/RUN --show_preprocessed=seen.png photo.jpg

Images: PNG, JPEG, BMP, ... of any size and colour, dark-on-light or light-on-dark, and .npy/.npz arrays
([H, W] or [N, H, W]). Each is prepared as MNIST's digits were (see data/digits.py). The model and
--show_preprocessed are checked before any picture is read. A file, or a picture in one, that cannot be used gets
one line on stderr; the others are still predicted, and the exit status is 2. At most --max_pictures pictures in
all; each file is bounded as data/digits.py and common/safeio.py say.
"""

import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from absl import flags

from distmnist.common import cli, files, progress
from distmnist.common.errors import RunFailed, UserError
from distmnist.data import digits
from distmnist.environment import tfquiet

FLAGS = flags.FLAGS
PROGRESS_FROM = 20  # files: more than this draw a progress bar on a terminal's stderr
SERVE_BATCH = 4096  # pictures per call of the model: its activations stay small whatever the batch
GRID_MAX = 1024  # pictures drawn by --show_preprocessed (the first ones): a grid of 128 rows, 12,544 pixels tall
GRID_TITLE = "what the model saw, with its answers"


def define_flags() -> None:
    flags.DEFINE_string("model", None, "A SavedModel written by distmnist.train, or its run directory.")
    flags.DEFINE_boolean("json", False, "One JSON object per image and line: path, digit, probability, top_k.")
    flags.DEFINE_integer("top_k", 3, "How many most likely digits to list per image (1-10).")
    flags.DEFINE_string(
        "show_preprocessed",
        None,
        "Write the 28x28 images the model saw, as a PNG grid, here "
        f"(the first {GRID_MAX:,}): a new file, or one an earlier run of this wrote.",
    )
    flags.DEFINE_integer(
        "max_pictures",
        digits.MAX_PICTURES,
        "At most this many pictures in all; a file that would pass it is refused in one line, before its data is read.",
    )


def model_path(path: str) -> str:
    """The SavedModel folder for --model: the folder itself or <run dir>/saved_model."""
    if not os.path.exists(path):
        raise UserError(f"--model={path} does not exist; pass logs/RUN from a finished distmnist.train run")
    if not os.path.isdir(path):
        raise UserError(
            f"--model={path} is a file, not a folder; pass the run directory (logs/RUN) or its saved_model folder"
        )
    for candidate in (path, os.path.join(path, "saved_model")):
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise UserError(
        f"--model={path} is neither a SavedModel nor a run directory holding saved_model/; "
        "pass logs/RUN from a finished distmnist.train run"
    )


def load_model(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """The serving function of the SavedModel that --model names, checked to be distmnist's: images uint8
    [None, 28, 28] in, probabilities [None, 10] among its outputs. UserError otherwise."""
    saved_model = model_path(path)
    tf = tfquiet.import_tensorflow()
    try:
        loaded = tf.saved_model.load(saved_model)
    except Exception as exc:  # noqa: BLE001  TensorFlow raises OSError, ValueError, its own errors, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # TensorFlow's advice follows
        raise UserError(
            f"--model={path}: {saved_model} cannot be loaded as a SavedModel ({reason[:300]}); pass a "
            "run directory of a finished distmnist.train run"
        ) from None
    serve = loaded.signatures.get("serving_default")
    if serve is None:
        found = ", ".join(sorted(loaded.signatures)) or "none"
        raise UserError(
            f"--model={path}: the SavedModel has no serving_default signature (it has: {found}); pass a "
            "model that distmnist.train exported"
        )
    expected = tf.TensorSpec([None, 28, 28], tf.uint8)
    args, kwargs = serve.structured_input_signature
    outputs = serve.structured_outputs
    probabilities = outputs.get("probabilities") if isinstance(outputs, dict) else None
    if (
        args
        or set(kwargs) != {"images"}
        or not expected.is_compatible_with(kwargs["images"])
        or kwargs["images"].dtype != tf.uint8
        or probabilities is None
        or not probabilities.shape.is_compatible_with([None, 10])
    ):
        taken = ", ".join(f"{name} {spec.dtype.name} {spec.shape}" for name, spec in sorted(kwargs.items()))
        raise UserError(
            f"--model={path}: its serving_default takes ({taken or 'nothing by name'}) and returns "
            f"({', '.join(sorted(outputs)) if isinstance(outputs, dict) else 'no named outputs'}), not "
            "images uint8 [None, 28, 28] to probabilities [None, 10]; pass a model that distmnist.train "
            "exported"
        )
    return lambda batch: serve(images=tf.constant(batch))["probabilities"].numpy()


def answer(serve: Callable[[np.ndarray], np.ndarray], prepared: Sequence[np.ndarray]) -> np.ndarray:
    """float32 [N, 10]: the model's probabilities for the N prepared pictures, SERVE_BATCH at a time."""
    return np.concatenate(
        [serve(np.stack(prepared[i : i + SERVE_BATCH])) for i in range(0, len(prepared), SERVE_BATCH)]
    )


def check_grid_path(path: str) -> None:
    """--show_preprocessed names a new file in a writable folder, or a grid that distmnist drew (its PNG text
    says so, digits.drawn_by_distmnist), which alone it may replace. UserError otherwise."""
    flag = f"--show_preprocessed={path}"
    if not path.strip() or path.endswith(os.sep) or files.is_url(path):
        raise UserError(f"{flag} is not a file name; name a local .png file, such as seen.png")
    if os.path.islink(path):
        raise UserError(f"{flag} is a symbolic link; name the file itself")
    if os.path.lexists(path):
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{flag} is a folder; name a .png file in it, such as {os.path.join(path, 'seen.png')}")
        if not stat.S_ISREG(mode) or not digits.drawn_by_distmnist(path):
            raise UserError(
                f"{flag} exists and is not a grid that distmnist.predict drew; distmnist replaces "
                "only its own files: name a new file, or move this one away"
            )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{flag}: the folder {folder} does not exist; create it or name a file elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: the folder {folder} is not writable; name a file elsewhere")


def write_grid(path: str, prepared: Sequence[np.ndarray], probabilities: np.ndarray) -> None:
    """The first GRID_MAX prepared pictures with their answers, as a PNG, written to a temporary file beside
    `path` and renamed over it: a reader sees the old file or the new one, never a part of one."""
    shown = min(len(prepared), GRID_MAX)
    png = digits.grid_png(prepared[:shown], [str(int(np.argmax(p))) for p in probabilities[:shown]], title=GRID_TITLE)
    try:
        files.write_bytes(path, png)
    except OSError as exc:
        raise RunFailed(
            f"--show_preprocessed={path} could not be written ({exc.strerror or exc}); the answers above "
            "stand, nothing was left behind; free space or name a file elsewhere"
        ) from None
    print(f"wrote {path}" + (f" (the first {shown:,} of {len(prepared):,} pictures)" if shown < len(prepared) else ""))


def read_pictures(paths: Sequence[str], max_pictures: int) -> tuple[list[str], list[np.ndarray], int]:
    """(names, prepared uint8 [28, 28] pictures, failures) for the files named: every file is read, within
    max_pictures in all; each file or picture that cannot be used is one line on stderr."""
    names: list[str] = []
    prepared: list[np.ndarray] = []
    failures = 0
    bar = progress.Bar(len(paths), "reading", sys.stderr) if len(paths) > PROGRESS_FROM else None

    def report(message: str) -> None:
        (bar.say if bar else lambda line: print(line, file=sys.stderr))(f"distmnist.predict: error: {message}")

    for done, path in enumerate(paths, 1):
        try:
            pictures: Iterable[tuple[str, np.ndarray]] = digits.load(path, room=max_pictures - len(names))
        except digits.TooManyPictures as exc:
            report(
                f"{path}: holds {digits.picture_count(exc.count)}"
                + (
                    f", more than --max_pictures={max_pictures:,}; raise it, or split the file"
                    if exc.count > max_pictures
                    else f"; with the {len(names):,} read before it, more than --max_pictures={max_pictures:,} in all; "
                    "raise it, or predict in several runs"
                )
            )
            pictures, failures = [], failures + 1
        except digits.ImageError as exc:
            report(str(exc))
            pictures, failures = [], failures + 1
        for name, gray in pictures:
            try:
                prepared.append(digits.to_mnist(gray, name))
                names.append(name)
            except digits.ImageError as exc:
                report(str(exc))
                failures += 1
        if bar:
            bar.update(done)
    if bar:
        bar.close()
    return names, prepared, failures


def main(paths: list[str]) -> int:
    if not FLAGS.model:
        raise UserError("--model is required: a run directory (logs/RUN) or its saved_model folder")
    if not paths:
        raise UserError("name at least one image: python -m distmnist.predict --model=logs/RUN IMAGE...")
    if not 1 <= FLAGS.top_k <= 10:
        raise UserError(f"--top_k must be between 1 and 10, got {FLAGS.top_k}")
    if FLAGS.max_pictures < 1:
        raise UserError(f"--max_pictures must be a positive integer, got {FLAGS.max_pictures}")
    if FLAGS.show_preprocessed is not None:
        check_grid_path(FLAGS.show_preprocessed)
    serve = load_model(FLAGS.model)  # before any picture: a bad model would waste all the work on them

    names, prepared, failures = read_pictures(paths, FLAGS.max_pictures)
    if not names:
        return 2
    probabilities = answer(serve, prepared)
    for name, p in zip(names, probabilities, strict=True):
        top = np.argsort(-p, kind="stable")[: FLAGS.top_k]
        if FLAGS.json:
            print(
                json.dumps(
                    {
                        "path": name,
                        "digit": int(top[0]),
                        "probability": float(p[top[0]]),
                        "top_k": [{"digit": int(d), "probability": float(p[d])} for d in top],
                    }
                )
            )
        else:
            others = ", ".join(f"{d} {p[d]:.1%}" for d in top[1:])
            print(f"{name}: {top[0]} ({p[top[0]]:.1%})" + (f"  then {others}" if others else ""))
    if FLAGS.show_preprocessed is not None:
        write_grid(FLAGS.show_preprocessed, prepared, probabilities)
    return 2 if failures else 0


if __name__ == "__main__":
    cli.run(main, prog="distmnist.predict", takes_args=True, define_flags=define_flags)

"""`python -m distmnist.predict` on digits cut from the real MNIST test set and saved as image files, plain and
altered, and the MNIST-style preparation behind it."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from distmnist.data import dataset, images
from distmnist.runs.export import Classifier, save
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer, TrainerSettings

from helpers import REPO, run_module, run_schedule

pytestmark = [pytest.mark.slow]

COUNT = 40


@pytest.fixture(scope="module")
def mnist():
    return dataset.load()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, mnist):
    """A model trained for one epoch on real MNIST (about 95% on the test set)."""
    trainer = Trainer(TrainerSettings(), make_strategy().strategy, mnist)
    run_schedule(trainer, trainer.steps_per_epoch)
    path = tmp_path_factory.mktemp("run") / "saved_model"
    classifier = Classifier(trainer.weights())
    classifier.fit_temperature(mnist.x_train[::6], mnist.y_train[::6])  # as a run does
    save(classifier, str(path))
    return str(path)


def test_the_readme_example_prints_what_the_readme_shows(tmp_path, mnist, saved_model):
    """The README's predict example, on the test-set digit it is written from: the same command gives a line of
    the documented form, with the same digit."""
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme[readme.index("### Predicting digits in pictures"):]
    start = section.index("```sh\n") + 6
    example = section[start:section.index("\n```", start)].splitlines()
    command = next(line for line in example if "-m distmnist.predict" in line)
    documented = example[example.index(command) + 1]
    assert command == "$ .venv/bin/python -m distmnist.predict --model=logs/RUN digit.png"
    writer = next(line for line in example if "save('digit.png')" in line)
    index = int(re.search(r"x_test\[(\d+)\]", writer).group(1))
    Image.fromarray(mnist.x_test[index]).save(tmp_path / "digit.png")
    result = run_module("distmnist.predict", f"--model={saved_model}", str(tmp_path / "digit.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().replace(str(tmp_path) + "/", "")
    form = re.sub(r"\d+", r"\\d+", re.escape(documented))
    assert re.fullmatch(form, printed), (documented, printed)
    assert printed.split()[1] == documented.split()[1] == str(mnist.y_test[index])


def test_mnist_digits_pass_through_and_altered_ones_come_back_close(mnist):
    digits = mnist.x_test[:COUNT]
    for digit in digits:
        np.testing.assert_array_equal(images.to_mnist(digit), digit)  # already MNIST's form: untouched
    for digit in digits[:10]:
        altered = 255 - np.asarray(Image.fromarray(digit).resize((61, 47), Image.Resampling.BICUBIC), np.float32)
        prepared = images.to_mnist(altered)
        assert prepared.dtype == np.uint8 and prepared.shape == (28, 28)
        rows, cols = np.nonzero(prepared > 64)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) < 21  # fitted into the 20x20 box
        weights = prepared.astype(np.float64)
        centre = [(np.indices(prepared.shape)[axis] * weights).sum() / weights.sum() for axis in (0, 1)]
        assert np.allclose(centre, 13.5, atol=1.0)  # centred by centre of mass
    with pytest.raises(images.ImageError, match="no digit found"):
        images.to_mnist(np.full([40, 30], 200.0), "blank.png")


def test_cli_agrees_with_the_saved_model_and_reports_bad_files(tmp_path, mnist, saved_model):
    digits, labels = mnist.x_test[:COUNT], mnist.y_test[:COUNT]
    plain, altered = [], []
    for i, digit in enumerate(digits):
        path = tmp_path / f"plain{i}.png"
        Image.fromarray(digit).save(path)  # white on black, 28x28
        plain.append(str(path))
        size = (45 + 4 * (i % 5), 33 + 6 * (i % 7))  # odd sizes, aspect changed
        ink = 255 - digit if i % 2 else digit  # black on white, or white on black
        photo = Image.fromarray(ink).resize(size, Image.Resampling.BICUBIC).convert("RGB")
        path = tmp_path / (f"scan{i}.jpg" if i % 3 else f"scan{i}.bmp")  # in colour, JPEG or BMP
        photo.save(path)
        altered.append(str(path))
    np.save(tmp_path / "batch.npy", digits[:5])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    bad = [str(tmp_path / "missing.png"), str(tmp_path / "empty.png"), str(tmp_path / "notes.png")]

    result = run_module("distmnist.predict", f"--model={saved_model}", "--json", "--top_k=3",
                        f"--show_preprocessed={tmp_path / 'seen.png'}",
                        *plain, bad[0], *altered, bad[1], str(tmp_path / "batch.npy"), bad[2])
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert "missing.png: no such file" in errors[0] and "empty.png: an empty file" in errors[1]
    assert "notes.png: not an image" in errors[2]

    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [a["path"] for a in answers] == plain + altered + [f"{tmp_path / 'batch.npy'}[{i}]" for i in range(5)]
    for answer in answers:
        assert [t["digit"] for t in answer["top_k"]][0] == answer["digit"] and len(answer["top_k"]) == 3
        assert answer["top_k"][0]["probability"] == answer["probability"] >= answer["top_k"][1]["probability"]

    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    direct = serve(images=tf.constant(digits))["probabilities"].numpy()
    by_path = {a["path"]: a for a in answers}
    # The plain images are the raw arrays: the same answers (to float32 rounding: batches of other sizes).
    for i, path in enumerate(plain):
        assert by_path[path]["digit"] == int(np.argmax(direct[i]))
        assert by_path[path]["probability"] == pytest.approx(float(direct[i].max()), abs=1e-6)
    for i in range(5):
        answer = by_path[f"{tmp_path / 'batch.npy'}[{i}]"]
        assert answer["digit"] == int(np.argmax(direct[i]))
        assert answer["probability"] == pytest.approx(float(direct[i].max()), abs=1e-6)
    raw_accuracy = np.mean(np.argmax(direct, axis=1) == labels)
    altered_accuracy = np.mean([by_path[p]["digit"] == y for p, y in zip(altered, labels)])
    assert raw_accuracy >= 0.9 and altered_accuracy >= raw_accuracy - 0.1, (raw_accuracy, altered_accuracy)

    seen = Image.open(tmp_path / "seen.png")
    assert seen.text["captions"].split("\n") == [str(a["digit"]) for a in answers]


def test_cli_prints_a_line_per_image_and_accepts_a_run_directory(tmp_path, mnist, saved_model):
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "seven.png")
    run_dir = os.path.dirname(saved_model)
    result = run_module("distmnist.predict", f"--model={run_dir}", "--top_k=2", str(tmp_path / "seven.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{tmp_path / 'seven.png'}: 7 (") and "%)  then " in line

    missing = run_module("distmnist.predict", f"--model={tmp_path}", str(tmp_path / "seven.png"))
    assert missing.returncode == 2 and "is neither a SavedModel nor a run directory" in missing.stderr


def test_a_decompression_bomb_among_good_pictures_is_one_line_and_the_rest_answered(tmp_path, mnist, saved_model):
    """A real bomb: a PNG of 30000 x 30000 pixels (900 MB once decoded) that is a few hundred KB on disk, and a
    .npy whose header declares 10 GB; each is refused from its header, the good pictures beside them answered,
    and the process stays small (its peak resident memory, as the kernel counts it)."""
    import subprocess
    import sys
    import zlib

    from test_safeio import npy_declaring, png_declaring

    width = height = 30000
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # the filter byte, then a row of black
    body = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(width, height, body))
    assert bomb.stat().st_size < 2_000_000
    huge = tmp_path / "huge.npy"
    huge.write_bytes(npy_declaring((100000, 100000)))
    good = []
    for i in range(3):
        Image.fromarray(mnist.x_test[i]).save(tmp_path / f"good{i}.png")
        good.append(str(tmp_path / f"good{i}.png"))

    # A parent of its own, whose RUSAGE_CHILDREN is this one process's peak resident memory, written to a file.
    measured = ("import resource, subprocess, sys; status = subprocess.run(sys.argv[2:]).returncode; "
                "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
                "sys.exit(status)")
    process = subprocess.Popen([sys.executable, "-c", measured, str(tmp_path / "peak_kib"), sys.executable, "-m",
                                "distmnist.predict", f"--model={saved_model}", good[0], str(bomb), good[1], str(huge),
                                good[2]], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    out, err = process.communicate(timeout=300)
    peak_mib = int((tmp_path / "peak_kib").read_text()) / 1024
    print(f"predict's peak resident memory: {peak_mib:.0f} MiB")
    assert peak_mib < 1000
    assert process.returncode == 2, err[-3000:]
    assert err.splitlines() == [
        f"distmnist.predict: error: {bomb}: declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, more than the "
        "24 megapixels a picture of a digit needs; scale it down",
        f"distmnist.predict: error: {huge}: its header declares uint8 [100000, 100000], 9,537 MiB, more than 256 MiB; "
        "split it into smaller files"]
    assert [line.split(":")[0] for line in out.splitlines()] == good

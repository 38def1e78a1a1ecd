"""`python -m distmnist.predict` on digits cut from the real MNIST test set and saved as image files, plain and
altered, and the MNIST-style preparation behind it (processes, marked slow); and, in this process, its readers
over hostile files, its bound on pictures, its checks of --model and --show_preprocessed."""

import contextlib
import json
import os
import re
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from distmnist.common.errors import RunFailed, UserError
from distmnist.data import dataset, digits
from distmnist.runs.export import Classifier, save
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer

from helpers import REPO, run_module, run_schedule, trainer_settings

COUNT = 40


@pytest.fixture(scope="module")
def mnist():
    return dataset.load()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, mnist):
    """A model trained for one epoch on real MNIST (about 95% on the test set)."""
    trainer = Trainer(trainer_settings(), make_strategy().strategy, mnist)
    run_schedule(trainer, mnist, trainer.steps_per_epoch)
    path = tmp_path_factory.mktemp("run") / "saved_model"
    classifier = Classifier(trainer.weights())
    classifier.fit_temperature(mnist.x_train[::6], mnist.y_train[::6])  # as a run does
    save(classifier, str(path))
    return str(path)


@pytest.mark.slow
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


@pytest.mark.slow
def test_mnist_digits_pass_through_and_altered_ones_come_back_close(mnist):
    samples = mnist.x_test[:COUNT]
    for digit in samples:
        np.testing.assert_array_equal(digits.to_mnist(digit), digit)  # already MNIST's form: untouched
    for digit in samples[:10]:
        altered = 255 - np.asarray(Image.fromarray(digit).resize((61, 47), Image.Resampling.BICUBIC), np.float32)
        prepared = digits.to_mnist(altered)
        assert prepared.dtype == np.uint8 and prepared.shape == (28, 28)
        rows, cols = np.nonzero(prepared > 64)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) < 21  # fitted into the 20x20 box
        weights = prepared.astype(np.float64)
        centre = [(np.indices(prepared.shape)[axis] * weights).sum() / weights.sum() for axis in (0, 1)]
        assert np.allclose(centre, 13.5, atol=1.0)  # centred by centre of mass
    with pytest.raises(digits.ImageError, match="no digit found"):
        digits.to_mnist(np.full([40, 30], 200.0), "blank.png")


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_prints_a_line_per_image_and_accepts_a_run_directory(tmp_path, mnist, saved_model):
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "seven.png")
    run_dir = os.path.dirname(saved_model)
    result = run_module("distmnist.predict", f"--model={run_dir}", "--top_k=2", str(tmp_path / "seven.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{tmp_path / 'seven.png'}: 7 (") and "%)  then " in line

    missing = run_module("distmnist.predict", f"--model={tmp_path}", str(tmp_path / "seven.png"))
    assert missing.returncode == 2 and "is neither a SavedModel nor a run directory" in missing.stderr


@pytest.mark.slow
def test_a_decompression_bomb_among_good_pictures_is_one_line_and_the_rest_answered(tmp_path, mnist, saved_model):
    """A real bomb: a PNG of 30000 x 30000 pixels (900 MB once decoded) that is a few hundred KB on disk, a .npy
    whose header declares 10 GB, and a .npz of a few KB holding 16.7 million pictures of 1x1 pixels (13 GB once
    prepared: the kernel killed predict); beside them a PNG Pillow cannot read, a FIFO (predict hung on it) and an
    encrypted .npz. Each is refused in one line, the pictures counted and sized from the headers, the good
    pictures among them answered, and the process stays small (its peak resident memory, as the kernel counts
    it)."""
    import sys
    import zlib

    from test_safeio import npy_declaring, npz_bytes, patched_zip, png_declaring

    width = height = 30000
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # the filter byte, then a row of black
    body = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(width, height, body))
    assert bomb.stat().st_size < 2_000_000
    huge = tmp_path / "huge.npy"
    huge.write_bytes(npy_declaring((100000, 100000)))
    many = tmp_path / "many.npz"
    many.write_bytes(tiny_pictures_npz(2 ** 24))
    assert many.stat().st_size < 300_000
    foreign, fifo, encrypted = tmp_path / "foreign.png", tmp_path / "fifo.png", tmp_path / "encrypted.npz"
    foreign.write_bytes(png_with_a_foreign_chunk())
    os.mkfifo(fifo)
    encrypted.write_bytes(patched_zip(npz_bytes(a=mnist.x_test[:2]), "flags", 0x1))
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
                                str(many), str(foreign), str(fifo), str(encrypted), good[2]], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
        "split it into smaller files",
        f"distmnist.predict: error: {many}: holds 16,777,216 pictures, more than --max_pictures=100,000; raise it, or "
        "split the file",
        f"distmnist.predict: error: {foreign}: cannot be read as an image (broken PNG file (chunk b'XY-W'))",
        f"distmnist.predict: error: {fifo}: is a FIFO (named pipe), not a file",
        f"distmnist.predict: error: {encrypted}:a.npy: is encrypted, and distmnist reads no passwords; save it without "
        "one"]
    assert [line.split(":")[0] for line in out.splitlines()] == good


# In this process: predict's readers and checks, over real hostile files.

def png_with_a_foreign_chunk() -> bytes:
    """A 28x28 PNG whose image data is split in two IDAT chunks with a chunk between them whose type is not a
    chunk type: Pillow's decoder, reading on for the rest of the data, raises SyntaxError("broken PNG file")."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"".join(b"\0" + bytes([255 * (abs(x - 14) < 3)] * 28) for x in range(28)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", rows[:10]) + chunk(b"XY-W", b"foreign") + chunk(b"IDAT", rows[10:]) + chunk(b"IEND", b""))


def tiny_pictures_npz(count: int) -> bytes:
    """A .npz of `count` 1x1 pictures: a few KB that would be `count` x 784 bytes once prepared."""
    import io
    packed = io.BytesIO()
    np.savez_compressed(packed, many=np.zeros([count, 1, 1], np.uint8))
    return packed.getvalue()


HOSTILE = {  # name: (what to write there, the one line expected after "<path>: ")
    "foreign-chunk.png": (png_with_a_foreign_chunk(), r"cannot be read as an image \(broken PNG file \(chunk "
                                                      r"b'XY-W'\)\)"),
    "nan.npy": (np.full([2, 28, 28], np.nan, np.float32), r"holds NaN or infinite values; a picture's pixels are "
                                                           r"finite numbers"),
    "inf.npy": (np.where(np.eye(28) > 0, np.inf, 0.0), r"holds NaN or infinite values; a picture's pixels are finite "
                                                       r"numbers"),
    "huge.npy": (np.full([28, 28], 1e300), r"holds values beyond float32's range; scale its pixels to 0-255 or 0-1"),
    "many.npz": (tiny_pictures_npz(100_001), r"holds 100,001 pictures, more than the 100,000 this "
                                                             r"batch has room for"),
    "complex.npy": (np.zeros([28, 28], np.complex64), r"expected a picture \[H, W\] or pictures \[N, H, W\] of "
                                                      r"numbers, got complex64 \[28, 28\]"),
    "flat.npy": (np.zeros([2, 3, 28, 28], np.uint8), r"expected a picture \[H, W\] or pictures \[N, H, W\] of "
                                                     r"numbers, got uint8 \[2, 3, 28, 28\]"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_each_hostile_file_is_one_image_error(tmp_path, name):
    """Each was a traceback (Pillow's SyntaxError), an answer made of NaN (a picture of NaN passed as MNIST's
    form), or, for 100,001 pictures of 1x1 pixels in a few KB, every picture prepared: 16.7 million of them
    took the kernel's OOM killer. Each is one ImageError now, the pictures counted from the header."""
    content, message = HOSTILE[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(digits.ImageError, match=f"^{path}: {message}$"):
        list(digits.load(str(path)))


@pytest.mark.parametrize("kind", ["a folder", "a FIFO (named pipe)", "a socket", "a character device"])
@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_what_is_not_a_file_is_refused_unopened(tmp_path, kind, suffix):
    """A FIFO hung predict (Pillow's and numpy's open() wait for a writer), a device was opened and read: each is
    refused from its stat, and the FIFO watch sees no reader. The device is a link to /dev/null (links are
    followed, as open() follows them): old code read /dev/zero, as a .npy, until the kernel killed it."""
    import contextlib
    from test_safeio import FifoWatch, special_files

    found = special_files(tmp_path)[kind]
    path = str(tmp_path / f"picture{suffix}")
    if kind == "a character device":
        os.symlink(found, path)
    else:
        os.rename(found, path)
    with FifoWatch(path) if "FIFO" in kind else contextlib.nullcontext() as watch:
        with pytest.raises(digits.ImageError, match=f"^{re.escape(path)}: is {re.escape(kind)}, not a file$"):
            list(digits.load(path))
    assert not (watch and watch.opened)


def test_every_file_and_picture_that_can_be_answered_is(tmp_path, capsys):
    """Among good files: bad files, a blank picture inside an array (its own line: the pictures beside it are
    answered), and files that would pass --max_pictures: a file larger than the bound, and one that the pictures
    read before it leave no room for (those after it that fit are still read)."""
    from distmnist import predict

    good = np.zeros([3, 28, 28], np.uint8)
    good[:, 10:18, 12:16] = 255
    np.save(tmp_path / "three.npy", good)
    blank = good.copy()
    blank[1] = 200  # a light picture with no ink
    np.save(tmp_path / "with-blank.npy", blank)
    Image.fromarray(good[0]).save(tmp_path / "one.png")
    (tmp_path / "foreign.png").write_bytes(png_with_a_foreign_chunk())
    np.save(tmp_path / "nan.npy", np.full([28, 28], np.nan))
    paths = [str(tmp_path / name) for name in ("one.png", "foreign.png", "three.npy", "nan.npy", "with-blank.npy",
                                                "missing.png", "three.npy", "one.png")]
    names, prepared, failures = predict.read_pictures(paths, max_pictures=8)
    lines = capsys.readouterr().err.splitlines()
    assert names == [paths[0], *(f"{paths[2]}[{i}]" for i in range(3)), f"{paths[4]}[0]", f"{paths[4]}[2]",
                     paths[7]]
    assert len(prepared) == len(names) and all(p.shape == (28, 28) and p.dtype == np.uint8 for p in prepared)
    assert failures == len(lines) == 5, lines
    assert lines == [
        f"distmnist.predict: error: {paths[1]}: cannot be read as an image (broken PNG file (chunk b'XY-W'))",
        f"distmnist.predict: error: {paths[3]}: holds NaN or infinite values; a picture's pixels are finite numbers",
        f"distmnist.predict: error: {paths[4]}[1]: no digit found (the picture is blank)",
        f"distmnist.predict: error: {paths[5]}: no such file",
        f"distmnist.predict: error: {paths[6]}: holds 3 pictures; with the 6 read before it, more than "
        "--max_pictures=8 in all; raise it, or predict in several runs"]
    predict.read_pictures([paths[2]], max_pictures=2)
    assert capsys.readouterr().err == (f"distmnist.predict: error: {paths[2]}: holds 3 pictures, more than "
                                       "--max_pictures=2; raise it, or split the file\n")
    names, _, failures = predict.read_pictures([paths[0], paths[7]], max_pictures=1)
    assert names == [paths[0]] and failures == 1
    assert capsys.readouterr().err == (f"distmnist.predict: error: {paths[7]}: holds 1 picture; with the 1 read "
                                       "before it, more than --max_pictures=1 in all; raise it, or predict in "
                                       "several runs\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A distmnist export (untrained weights) and folders that are not one: each kind --model may be given."""
    from helpers import export_saved_model, model_weights
    from distmnist.training.model import MLP

    root = tmp_path_factory.mktemp("models")
    (root / "good").mkdir()
    export_saved_model(model_weights(MLP()), str(root / "good" / "saved_model"))
    bare = tf.Module()
    bare.v = tf.Variable(1.0)
    tf.saved_model.save(bare, str(root / "no-signature"))

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")])
        def f(self, x):
            return {"y": x * 2.0}
    other = Other()
    tf.saved_model.save(other, str(root / "other-signature"), signatures={"serving_default": other.f})
    tf.saved_model.save(other, str(root / "other-name"), signatures={"predict": other.f})
    (root / "garbage").mkdir()
    (root / "garbage" / "saved_model.pb").write_bytes(b"\x00\xffnot a protocol buffer" * 8)
    (root / "a-file").write_text("not a folder")
    (root / "empty").mkdir()
    return root


BAD_MODELS = {
    "missing": r"--model={}/missing does not exist; pass logs/RUN from a finished distmnist.train run",
    "a-file": r"--model={}/a-file is a file, not a folder; pass the run directory \(logs/RUN\) or its saved_model "
              r"folder",
    "empty": r"--model={}/empty is neither a SavedModel nor a run directory holding saved_model/",
    "garbage": r"--model={0}/garbage: {0}/garbage cannot be loaded as a SavedModel \(Cannot parse file .*\); pass a "
               r"run directory of a finished distmnist.train run",
    "no-signature": r"--model={}/no-signature: the SavedModel has no serving_default signature \(it has: none\); "
                    r"pass a model that distmnist.train exported",
    "other-name": r"--model={}/other-name: the SavedModel has no serving_default signature \(it has: predict\)",
    "other-signature": r"--model={}/other-signature: its serving_default takes \(x float32 \(None, 784\)\) and "
                       r"returns \(y\), not images uint8 \[None, 28, 28\] to probabilities \[None, 10\]; pass a model "
                       r"that distmnist.train exported",
}


@pytest.mark.parametrize("kind", BAD_MODELS)
def test_a_model_that_is_not_distmnists_is_one_user_error(models, kind):
    """A folder that is not a SavedModel, or a SavedModel without distmnist's serving signature, was a traceback
    after every picture had been read (tf.saved_model.load's OSError, a KeyError for the signature, a TypeError
    calling one that takes other inputs). Now a UserError, from predict's check before any picture is read."""
    from distmnist import predict

    with pytest.raises(UserError, match="^" + BAD_MODELS[kind].format(models)):
        predict.load_model(str(models / kind))


def test_the_model_answers_in_batches_of_bounded_size(models):
    """Served SERVE_BATCH pictures at a time (the model's activations stay small however many there are): the
    same answers as one call over all of them."""
    from distmnist import predict

    serve = predict.load_model(str(models / "good"))  # the run directory: its saved_model/ is found
    pictures = list(np.random.default_rng(0).integers(0, 256, [predict.SERVE_BATCH + 3, 28, 28], dtype=np.uint8))
    probabilities = predict.answer(serve, pictures)
    assert probabilities.shape == (predict.SERVE_BATCH + 3, 10)
    np.testing.assert_allclose(probabilities, serve(np.stack(pictures)), atol=1e-6)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@contextlib.contextmanager
def small_tmpfs(path, size_kib: int = 64):
    """A real tmpfs of size_kib mounted at path for the block (skipped where this process may not mount one)."""
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root and "
                    "CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_show_preprocessed_takes_a_new_file_or_a_grid_distmnist_drew(tmp_path):
    """Checked before any picture is read: an existing file distmnist did not draw (it was replaced after the
    predictions), a folder, a FIFO, a link, a missing folder, a read-only one; an earlier grid is replaced."""
    from distmnist import predict
    from test_safeio import special_files

    mine = tmp_path / "mine.png"
    Image.fromarray(np.zeros([28, 28], np.uint8)).save(mine)  # a user's PNG: never replaced
    os.symlink(mine, tmp_path / "link.png")
    fifo = special_files(tmp_path)["a FIFO (named pipe)"]
    refused = {
        str(mine): "exists and is not a grid that distmnist.predict drew; distmnist replaces only its own files: "
                   "name a new file, or move this one away",
        fifo: "exists and is not a grid that distmnist.predict drew",
        str(tmp_path): f"is a folder; name a .png file in it, such as {tmp_path / 'seen.png'}",
        str(tmp_path / "link.png"): "is a symbolic link; name the file itself",
        str(tmp_path / "nowhere" / "seen.png"): f": the folder {tmp_path / 'nowhere'} does not exist; create it or "
                                                "name a file elsewhere",
        "": "is not a file name; name a local .png file, such as seen.png",
        f"{tmp_path}/out/": "is not a file name",
    }
    before = mine.read_bytes()
    for path, message in refused.items():
        with pytest.raises(UserError, match=re.escape(f"--show_preprocessed={path}{'' if message[0] == ':' else ' '}"
                                                      f"{message}")):
            predict.check_grid_path(path)
    assert mine.read_bytes() == before

    seen = tmp_path / "seen.png"
    predict.check_grid_path(str(seen))  # new
    shades = [np.full([28, 28], i * 20, np.uint8) for i in range(5)]
    predict.write_grid(str(seen), shades, np.eye(10)[:5])
    assert Image.open(seen).text["captions"].split("\n") == ["0", "1", "2", "3", "4"]
    predict.check_grid_path(str(seen))  # drawn by distmnist: may be replaced
    assert digits.drawn_by_distmnist(str(seen)) and not digits.drawn_by_distmnist(str(mine))
    assert sorted(os.listdir(tmp_path)) == sorted(["mine.png", "link.png", "fifo", "seen.png", "socket", "folder"])


def test_the_grid_is_bounded_and_a_failed_write_leaves_the_old_one(tmp_path, capsys):
    """At most GRID_MAX pictures drawn, said on the line that names the file. On a full filesystem (a real
    tmpfs), the write fails in one line (exit 1: the answers above stand), the earlier grid intact and no
    temporary file left; read-only, the path is refused before any work."""
    from distmnist import predict

    with small_tmpfs(tmp_path / "disk", size_kib=256) as disk:
        seen = disk / "seen.png"
        many = [np.full([28, 28], i % 256, np.uint8) for i in range(predict.GRID_MAX + 6)]
        predict.write_grid(str(seen), many, np.eye(10)[np.arange(len(many)) % 10])
        assert capsys.readouterr().out == f"wrote {seen} (the first 1,024 of 1,030 pictures)\n"
        grid = Image.open(seen)
        assert len(grid.text["captions"].split("\n")) == predict.GRID_MAX
        before = seen.read_bytes()
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left on device"):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        with pytest.raises(RunFailed, match=re.escape(f"--show_preprocessed={seen} could not be written (No space "
                                                      "left on device); the answers above stand")):
            predict.write_grid(str(seen), many[:8], np.eye(10)[np.arange(8) % 10])
        assert seen.read_bytes() == before and sorted(os.listdir(disk)) == ["filler", "seen.png"]
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(UserError, match=f"the folder {disk} is not writable; name a file elsewhere"):
            predict.check_grid_path(str(disk / "new.png"))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["model", "show_preprocessed"])
def test_a_bad_model_or_output_is_one_line_before_any_picture(tmp_path, models, case):
    """As a user runs it: a model without distmnist's signature, or --show_preprocessed naming the user's own file,
    is one line and exit 2 before any picture is read or answered (the missing picture gets no line), and the
    user's file is untouched. Before: the pictures were read and answered, then a traceback (the model) or the
    user's file replaced by the grid."""
    Image.fromarray(np.zeros([28, 28], np.uint8)).save(tmp_path / "digit.png")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"\x89PNG the user's own")
    flags = [f"--model={models / 'other-signature'}"] if case == "model" else [
        f"--model={models / 'good'}", f"--show_preprocessed={mine}"]
    result = run_module("distmnist.predict", *flags, str(tmp_path / "digit.png"), str(tmp_path / "missing.png"),
                        unset=["TF_CPP_MIN_LOG_LEVEL"])
    assert result.returncode == 2 and result.stdout == ""
    expected = (f"--model={models / 'other-signature'}: its serving_default takes (x float32" if case == "model" else
                f"--show_preprocessed={mine} exists and is not a grid that distmnist.predict drew")
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distmnist.predict: error: {expected}"), result.stderr
    assert mine.read_bytes() == b"\x89PNG the user's own"

"""What users see on stderr: nothing from TensorFlow that they did not ask for, and bad input as exactly one line,
with TF_CPP_MIN_LOG_LEVEL unset (as users run) and oneDNN forced on, which makes TensorFlow print its oneDNN
banner on any x86 CPU as it does by itself on Intel CPUs with AVX-512."""

import re

import numpy as np
import pytest

from distmnist.training.model import MLP

from helpers import export_saved_model, model_weights, run_module, run_python

pytestmark = [pytest.mark.slow]

AS_USERS_RUN = {"unset": ("TF_CPP_MIN_LOG_LEVEL",), "env": {"TF_ENABLE_ONEDNN_OPTS": "1"}}
TENSORFLOW_LINE = re.compile(r"\.cc:\d+\]|oneDNN|absl::InitializeLog|cuInit|cuda|rebuild TensorFlow", re.I)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "saved_model"
    export_saved_model(model_weights(MLP(seed=1)), str(path))
    return str(path)


@pytest.mark.parametrize("module,args,message", [
    ("distmnist.train", ["--batch_size=0"], "--batch_size must be a positive integer, got 0"),
    ("distmnist.train", ["--data_dir=/nonexistent/mnist"], "/nonexistent/mnist"),
    ("bench", ["--rounds=0"], "--turns, --race_rounds and --checkpoint_every must be positive"),
    ("distmnist.predict", ["--model=/nonexistent", "x.png"], "--model=/nonexistent does not exist"),
    ("distmnist.doctor", ["--smoke_steps=-1"], "--smoke_steps must be >= 0"),
], ids=["train-flag", "train-data", "bench", "predict-model", "doctor"])
def test_bad_input_is_one_line(tmp_path, module, args, message):
    result = run_module(module, *args, **AS_USERS_RUN)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{module}: error: ") and message in lines[0], result.stderr


def test_a_bad_picture_beside_good_ones_is_one_line_and_the_others_are_served(tmp_path, saved_model):
    np.save(tmp_path / "good.npy", np.zeros([2, 28, 28], np.uint8))
    (tmp_path / "bad.png").write_text("not an image")
    result = run_module("distmnist.predict", f"--model={saved_model}", str(tmp_path / "good.npy"),
                        str(tmp_path / "bad.png"), **AS_USERS_RUN)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distmnist.predict: error: {tmp_path / 'bad.png'}: not an image")
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [f"{tmp_path / 'good.npy'}[0]",
                                                                          f"{tmp_path / 'good.npy'}[1]"]


def test_a_training_run_prints_nothing_from_tensorflow(tmp_path, tiny_npz_dir):
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={tmp_path}", "--max_steps=4",
                        "--batch_size=16", "--cpu_replicas=2", **AS_USERS_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if TENSORFLOW_LINE.search(line)] == []


def test_tensorflow_is_imported_without_keras_which_still_works_when_used():
    result = run_python("""
import sys
from distmnist.environment import tfquiet
tf = tfquiet.import_tensorflow()
print("keras" in sys.modules, "matplotlib" in sys.modules, any(m.startswith("keras") for m in sys.modules))
print(tf.keras.layers.Dense(2)(tf.zeros([1, 3])).shape, tf.keras.optimizers.SGD.__name__)
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["False False False", "(1, 2) SGD"]

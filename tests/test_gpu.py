"""On a real GPU (skipped without one): training reaches the accuracy, 2 GPUs train what 1 does, the reloaded
SavedModel gives the GPU-trained model's answers, and the bench runs and names the device.

TF32 is turned off (NVIDIA_TF32_OVERRIDE=0) where runs are compared: on Ampere and later, TensorFlow's float32
matmuls otherwise round their inputs to 10-bit mantissas and no 1e-5 comparison would hold."""

import json

import numpy as np
import pytest

import tensorflow as tf

from helpers import run_module, run_python, saved_weights

pytestmark = pytest.mark.gpu
GPUS = tf.config.list_physical_devices("GPU")
NO_TF32 = {"NVIDIA_TF32_OVERRIDE": "0"}


def train(tmp_path, name, *flags, env=None):
    result = run_module("distmnist.train", f"--logdir={tmp_path}", f"--run_name={name}", "--checkpoint_every=0",
                        *flags, gpu=True, env=env, timeout_s=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / name / "run.json").read_text())


def test_one_gpu_trains_the_default_model_to_98_percent(tmp_path):
    summary = train(tmp_path, "one", "--num_gpus=1")
    assert summary["devices"] == ["/gpu:0"] and summary["num_replicas"] == 1
    assert summary["final_test_accuracy"] >= 0.98


@pytest.mark.skipif(len(GPUS) < 2, reason="needs two GPUs")
def test_two_gpus_train_the_model_one_gpu_trains(tmp_path):
    flags = ("--max_steps=30", "--nojit_compile", "--deterministic")
    train(tmp_path, "one", "--num_gpus=1", "--batch_size=128", *flags, env=NO_TF32)
    two = train(tmp_path, "two", "--num_gpus=2", "--batch_size=64", *flags, env=NO_TF32)
    assert two["num_replicas"] == 2 and two["strategy"] == "MirroredStrategy"
    a, b = saved_weights(tmp_path / "one"), saved_weights(tmp_path / "two")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5


def test_the_gpu_trained_savedmodel_gives_the_same_answers_on_the_cpu(tmp_path):
    train(tmp_path, "r", "--num_gpus=1", "--max_steps=200", env=NO_TF32)
    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 256, (500, 28, 28), dtype=np.uint8))
    code = f"""
import numpy as np, tensorflow as tf
serve = tf.saved_model.load({str(tmp_path / 'r' / 'saved_model')!r}).signatures["serving_default"]
out = serve(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
np.save({str(tmp_path)!r} + "/" + ("gpu" if tf.config.list_logical_devices("GPU") else "cpu") + ".npy",
        out["logits"].numpy())
"""
    for gpu in (True, False):
        result = run_python(code, timeout_s=300, gpu=gpu, env=NO_TF32)
        assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "gpu.npy"), np.load(tmp_path / "cpu.npy"), atol=1e-5)


def test_the_bench_runs_on_the_gpu_and_names_it(tmp_path):
    result = run_module("distmnist.bench", "--quick", f"--out={tmp_path}", gpu=True, timeout_s=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    gpu = report["machine"]["gpus"][0]
    assert all(row["device"] == gpu for row in report["results"])
    assert f"distmnist (default)          1 x {gpu}" in result.stdout

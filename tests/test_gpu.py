"""On real GPUs (skipped without one; the 2-GPU tests on fewer): where TensorFlow itself says the training ran,
the default model's accuracy, a GPU's answers against a CPU's, one GPU against two, NCCL and per-replica XLA on
two, a two-process cluster with a GPU each, and the bench.

Where numbers are compared across devices, TF32 is off (NVIDIA_TF32_OVERRIDE=0): on Ampere and later TensorFlow's
float32 matmuls otherwise round their inputs to 10-bit mantissas. Each tolerance says where it comes from."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import REPO, run_module, run_python, saved_weights
from rounding import forward_and_bound

pytestmark = pytest.mark.gpu
GPUS = tf.config.list_physical_devices("GPU")  # physical: the test process itself hides them (conftest)
NO_TF32 = {"NVIDIA_TF32_OVERRIDE": "0"}
TWO_GPUS = pytest.mark.skipif(len(GPUS) < 2, reason="needs two GPUs (MirroredStrategy, NCCL, a GPU per worker)")


def train(tmp_path, name, *flags, env=None, gpu=True):
    result = run_module("distmnist.train", f"--logdir={tmp_path}", f"--run_name={name}", "--checkpoint_every=0",
                        *flags, gpu=gpu, env=env, timeout_s=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / name / "run.json").read_text())


PLACEMENT = """
import json, sys
sys.path.insert(0, {tests!r})
import tensorflow as tf
tf.debugging.set_log_device_placement(True)  # TensorFlow's own word for where each op and function runs
from helpers import make_tiny_mnist, trainer_settings
from distmnist.training.trainer import Trainer, run_steps
from distmnist.training.strategy import make_strategy
choice = make_strategy(num_gpus={gpus})
trainer = Trainer(trainer_settings(batch_size=32), choice.strategy, make_tiny_mnist())
run_steps(trainer, 10)
import helpers
graph = helpers.graphs(trainer)["train"]
nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
print("REPORT " + json.dumps({{
    "variables": sorted({{v.device for w in trainer.model.weights
                          for v in choice.strategy.experimental_local_results(w)}}),
    "ops": sorted({{n.op for n in nodes}}),
    "xla_devices": sorted({{n.device for n in nodes if "_XlaMustCompile" in n.attr and n.attr["_XlaMustCompile"].b}}),
    "replicas": choice.num_replicas}}), flush=True)
"""


def placement(gpus: int) -> tuple:
    """(the report, the functions TensorFlow logged executing, with their devices) of 10 steps on `gpus` GPUs."""
    result = run_python(PLACEMENT.format(tests=os.path.join(REPO, "tests"), gpus=gpus), gpu=True, timeout_s=300,
                        env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))[7:])
    executed = re.findall(r"Executing op (\S+) in device (\S+)", result.stdout + result.stderr)
    return report, executed


def test_one_gpu_trains_on_the_gpu_as_tensorflow_reports_it():
    report, executed = placement(1)
    assert report["replicas"] == 1
    assert report["variables"] and all(d.endswith("GPU:0") for d in report["variables"]), report["variables"]
    functions = [device for op, device in executed if op.startswith("__inference_")]  # the training call's
    assert functions and all(d.endswith("GPU:0") for d in functions), executed[-20:]


def test_one_gpu_trains_the_default_model_to_98_percent(tmp_path):
    summary = train(tmp_path, "one", "--num_gpus=1", "--require_gpus")
    assert summary["devices"] == ["/gpu:0"] and summary["num_replicas"] == 1
    assert summary["final_test_accuracy"] >= 0.98


def test_the_gpu_trained_savedmodel_answers_on_a_cpu_within_float32s_rounding(tmp_path):
    """The same SavedModel served on the GPU and on the CPU: each pass is within tests/rounding.py's bound of the
    exact answer (Higham's, for any order of the sums), so they differ by at most twice it, element by element;
    the logits divide the outputs by the temperature (below 1), and the bound with them."""
    train(tmp_path, "r", "--num_gpus=1", "--max_steps=200", env=NO_TF32)
    images = np.random.default_rng(0).integers(0, 256, (500, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    code = f"""
import numpy as np, tensorflow as tf
model = tf.saved_model.load({str(tmp_path / 'r' / 'saved_model')!r})
out = model.signatures["serving_default"](images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
where = "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
np.savez({str(tmp_path)!r} + "/" + where + ".npz", outputs=out["outputs"].numpy(), logits=out["logits"].numpy(),
         temperature=model.temperature.numpy())
"""
    for gpu in (True, False):
        result = run_python(code, timeout_s=300, gpu=gpu, env=NO_TF32)
        assert result.returncode == 0, result.stderr[-3000:]
    on_gpu, on_cpu = np.load(tmp_path / "gpu.npz"), np.load(tmp_path / "cpu.npz")
    _, bound = forward_and_bound(saved_weights(tmp_path / "r"), images)
    assert np.all(np.abs(on_gpu["outputs"] - on_cpu["outputs"]) <= 2 * bound)
    logits_bound = 2 * bound / on_cpu["temperature"] + 2 ** -23 * np.abs(on_cpu["logits"])  # and the division's
    assert np.all(np.abs(on_gpu["logits"] - on_cpu["logits"]) <= logits_bound)


def weight_distance(a_dir, b_dir) -> float:
    a, b = saved_weights(a_dir), saved_weights(b_dir)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@TWO_GPUS
def test_two_gpus_train_what_one_trains_as_closely_as_two_cpu_replicas_do(tmp_path):
    """30 steps at lr 1.5: one replica against two differs only in the order of the gradient's sums (one sum over
    128 examples, or two over 64 and an all-reduce), which float32 rounds differently, and SGD carries the
    difference on. How far that takes the weights is measured on the CPU in the same test (one replica against
    two logical CPUs, same flags); the GPUs' sums take other orders still (cuBLAS's blocking, NCCL's ring), of
    the same rounding per sum, so they may drift up to an order of magnitude further, not more."""
    flags = ("--max_steps=30", "--nojit_compile", "--deterministic")
    train(tmp_path, "one", "--num_gpus=1", "--batch_size=128", *flags, env=NO_TF32)
    two = train(tmp_path, "two", "--num_gpus=2", "--batch_size=64", *flags, env=NO_TF32)
    assert two["num_replicas"] == 2 and two["strategy"] == "MirroredStrategy"
    train(tmp_path, "cpu_one", "--num_gpus=0", "--batch_size=128", *flags, gpu=False)
    train(tmp_path, "cpu_two", "--cpu_replicas=2", "--batch_size=64", *flags, gpu=False)
    on_cpus = weight_distance(tmp_path / "cpu_one", tmp_path / "cpu_two")
    on_gpus = weight_distance(tmp_path / "one", tmp_path / "two")
    assert on_gpus <= 10 * max(on_cpus, 1e-6), (on_gpus, on_cpus)


@TWO_GPUS
def test_two_gpus_all_reduce_with_nccl_and_run_xla_on_each_gpu():
    report, _ = placement(2)
    assert report["replicas"] == 2
    assert {d[-5:] for d in report["variables"]} == {"GPU:0", "GPU:1"}
    assert "NcclAllReduce" in report["ops"]  # MirroredStrategy's default on GPUs, in the traced step
    assert sorted(d[-5:] for d in report["xla_devices"]) == ["GPU:0", "GPU:0", "GPU:1", "GPU:1"]  # grads, SGD


@TWO_GPUS
def test_a_two_process_cluster_trains_with_a_gpu_each(tmp_path):
    result = subprocess.run(["bash", os.path.join(REPO, "launch", "local_cluster.sh"), "2", "--",
                             f"--logdir={tmp_path}", "--run_name=c", "--max_steps=60", "--require_gpus"],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable,
                                                                              "CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "c" / "run.json").read_text())
    assert summary["strategy"] == "MultiWorkerMirroredStrategy (2 workers, NCCL collectives)"
    assert summary["num_replicas"] == 2 and all("gpu" in d for d in summary["devices"])


def test_the_bench_runs_on_the_gpu(tmp_path):
    """The bench on GPUs: every TensorFlow row measured there; JAX measured where its CUDA backend is installed
    (the bench-gpu extra), else skipped in one line."""
    from bench.contenders import jax_scan

    result = run_module("bench", "--quick", f"--out={tmp_path}", gpu=True, timeout_s=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["gpus"]
    jax = report["distmnist_over_jax"]
    if "skipped" in jax:
        assert jax["skipped"] in (jax_scan.NOT_INSTALLED, jax_scan.NO_BACKEND.format(platform="gpu"))
        assert f"skipped, {jax['skipped']}" in result.stdout
    else:
        assert jax["by_replicas"]["1"]["median"] > 0

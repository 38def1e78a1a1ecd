"""`python -m distmnist.train` end to end on tiny data, and its answers to bad input."""

import json
import os
import xml.etree.ElementTree as ET

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorflow.python.framework import tensor_util

from helpers import run_module, run_python

TINY_FLAGS = ("--max_steps=25", "--log_every=5", "--eval_every=10", "--batch_size=32", "--steps_per_loop=4")


def read_scalars(run_dir: str) -> dict:
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.MakeNdarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def svg_texts(path: str) -> list:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return [t.text for t in root.iter() if t.tag.endswith("text") and t.text]


@pytest.mark.parametrize("replica_flags, replicas", [((), 1), (("--cpu_replicas=2", "--input=tfdata"), 2)])
def test_a_run_writes_every_artifact(tmp_path, tiny_npz_dir, tiny_mnist, replica_flags, replicas):
    logdir = tmp_path / "logs"
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={logdir}", "--run_name=r",
                        *TINY_FLAGS, *replica_flags)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = logdir / "r"
    assert f"replicas:             {replicas}" in result.stdout
    assert "step 5 loss:" in result.stdout and "step 10 Evaluate Acc:" in result.stdout

    scalars = read_scalars(str(run_dir))
    assert [s for s, _ in scalars["loss"]] == [0, 5, 10, 15, 20]
    assert [s for s, _ in scalars["accuracy"]] == [0, 10, 20, 25]
    assert [s for s, _ in scalars["examples_per_sec"]] == [0, 5, 10, 15, 20]
    assert all(v == 1.5 for _, v in scalars["learning_rate"])
    assert scalars["loss"][-1][1] < scalars["loss"][0][1]

    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["global_step"] == 25 and summary["num_replicas"] == replicas
    assert summary["global_batch_size"] == 32 * replicas and summary["per_replica_batch_size"] == 32
    assert summary["final_test_accuracy"] == pytest.approx(scalars["accuracy"][-1][1])
    assert summary["flags"]["data_dir"] == tiny_npz_dir and summary["seed"] == 42
    for key in ("strategy", "devices", "epochs", "examples_per_sec", "wall_time_s", "tf_version"):
        assert summary[key] is not None

    train_texts, test_texts = svg_texts(run_dir / "train.svg"), svg_texts(run_dir / "test.svg")
    assert {"step", "MSE", "Training loss"} <= set(train_texts)
    assert {"step", "accuracy", "Test accuracy"} <= set(test_texts)

    reload = run_python(f"""
import sys, numpy as np, tensorflow as tf
serve = tf.saved_model.load({str(run_dir / 'saved_model')!r}).signatures["serving_default"]
out = serve(images=tf.constant(np.load({tiny_npz_dir + '/mnist.npz'!r})["x_test"]))
assert "distmnist" not in sys.modules
print(sorted(out), out["probabilities"].dtype.name, out["classes"].dtype.name, out["logits"].shape)
print(float(np.mean(out["classes"].numpy() == np.load({tiny_npz_dir + '/mnist.npz'!r})["y_test"])))
""")
    assert reload.returncode == 0, reload.stderr[-3000:]
    names, accuracy = reload.stdout.strip().splitlines()
    assert names == "['classes', 'logits', 'probabilities'] float32 int64 (100, 10)"
    assert float(accuracy) == pytest.approx(summary["final_test_accuracy"])
    assert not [p for p in os.listdir(run_dir) if p.startswith(".tmp")]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args, fragments", [
    (("--batch_size=0",), ("--batch_size must be a positive integer, got 0",)),
    (("--epochs=-1",), ("--epochs must be a positive integer",)),
    (("--learning_rate=0",), ("--learning_rate must be a positive finite number",)),
    (("--learning_rate=abc",), ("flag --learning_rate=abc",)),
    (("--num_gpus=-1",), ("--num_gpus must be >= 0",)),
    (("--input=gpu",), ("flag --input=gpu",)),
    (("positional",), ("unexpected arguments ['positional']",)),
])
def test_bad_flags_get_one_line_and_exit_2(args, fragments):
    assert_one_line_error(run_module("distmnist.train", *args, timeout_s=60), *fragments)


def test_bad_data_and_existing_runs_leave_everything_untouched(tmp_path, tiny_npz_dir):
    logdir = tmp_path / "logs"
    earlier = logdir / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text("{}")
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={logdir}",
                        "--run_name=earlier", *TINY_FLAGS)
    assert_one_line_error(result, "already exists and is not a distmnist run; choose another --run_name")
    assert os.listdir(earlier) == ["run.json"] and (earlier / "run.json").read_text() == "{}"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mnist.npz").write_bytes(b"PK\x03\x04truncated")
    result = run_module("distmnist.train", f"--data_dir={broken}", f"--logdir={logdir}", "--run_name=new",
                        *TINY_FLAGS)
    assert_one_line_error(result, "not a readable .npz file")
    assert sorted(os.listdir(logdir)) == ["earlier"]

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={not_a_folder}/logs",
                        *TINY_FLAGS)
    assert_one_line_error(result, "is not a writable folder; choose another --logdir")


def test_data_entry_point_reports_a_missing_folder():
    assert_one_line_error(run_module("distmnist.data", "--data_dir=/nonexistent/mnist", timeout_s=60),
                          "--data_dir=/nonexistent/mnist does not exist")

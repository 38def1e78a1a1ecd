"""`python -m distmnist.train` end to end on tiny data (every artifact, read back by TensorBoard's own reader and
served by a real TensorBoard server), and its answers to bad input."""

import gzip
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorflow.python.framework import tensor_util

from helpers import read_scalars, run_module, run_python, tensorboard_server, without_tensorflow

pytestmark = [pytest.mark.slow]

TINY_FLAGS = ("--max_steps=25", "--log_every=5", "--eval_every=10", "--batch_size=32", "--steps_per_loop=4")


def svg_texts(path: str) -> list:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return [t.text for t in root.iter() if t.tag.endswith("text") and t.text]


@pytest.mark.parametrize("replica_flags, replicas", [((), 1), (("--cpu_replicas=2", "--input=tfdata"), 2)])
def test_a_run_writes_every_artifact(tmp_path, tiny_npz_dir, tiny_mnist, replica_flags, replicas):
    logdir = tmp_path / "logs"
    profile = ("--profile_steps=8,16",) if replicas == 1 else ()
    result = run_module(
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={logdir}",
        "--run_name=r",
        *TINY_FLAGS,
        *replica_flags,
        *profile,
    )
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
    assert_pictures_of_the_test_set(run_dir, summary["final_test_accuracy"], len(tiny_mnist.y_test))
    calibration = summary["calibration"]
    assert calibration["method"] == "temperature scaling" and calibration["temperature"] > 0
    assert calibration["fitted_on"] == "86 training images (every 6th)" and calibration["ece_bins"] == 15
    assert set(calibration["test"]) == {"ece_before", "nll_before", "ece_after", "nll_after"}
    title = next(t for t in svg_texts(run_dir / "calibration.svg") if t.startswith("Calibration on"))
    assert title.startswith(f"Calibration on 100 test images: ECE {calibration['test']['ece_after']:.4f}")
    assert {"confidence (top probability)", "accuracy", "perfect calibration"} <= set(
        svg_texts(run_dir / "calibration.svg")
    )
    last = result.stdout.strip().splitlines()[-1]  # the total and its three largest parts
    part = r"[a-z -]+ \d+\.\d s"
    assert re.fullmatch(rf"time: \d+\.\d s in all; {part}, {part}, {part}", last), last
    assert summary["timings"]["imports_s"] > 0 and summary["timings"]["total_s"] >= summary["wall_time_s"]
    for path in ("confusion.svg", "mistakes.png", "calibration.svg", "saved_model", "run.json", "train.svg"):
        assert f"  {run_dir / path}\n" in result.stdout  # the console summary lists everything written
    assert_run_described_in_tensorboard(str(run_dir), summary["flags"])
    if replicas == 1:
        assert_tensorboard_serves(logdir, "r", summary["history"])

    reload = run_python(f"""
import sys, numpy as np, tensorflow as tf
serve = tf.saved_model.load({str(run_dir / "saved_model")!r}).signatures["serving_default"]
out = serve(images=tf.constant(np.load({tiny_npz_dir + "/mnist.npz"!r})["x_test"]))
assert "distmnist" not in sys.modules
print(sorted(out), out["probabilities"].dtype.name, out["classes"].dtype.name, out["logits"].shape)
print(float(np.mean(out["classes"].numpy() == np.load({tiny_npz_dir + "/mnist.npz"!r})["y_test"])))
""")
    assert reload.returncode == 0, reload.stderr[-3000:]
    names, accuracy = reload.stdout.strip().splitlines()
    assert names == "['classes', 'logits', 'outputs', 'probabilities'] float32 int64 (100, 10)"
    assert float(accuracy) == pytest.approx(summary["final_test_accuracy"])
    assert not [p for p in os.listdir(run_dir) if p.startswith(".tmp")]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":  # the profile plugin compresses its answers
            body = gzip.decompress(body)
        return json.loads(body)


def assert_tensorboard_serves(logdir, run: str, history: dict):
    """Starts a real TensorBoard server on a free loopback port and reads the run's loss and accuracy back
    through its HTTP data API (bounded wait; the server is always stopped)."""
    with tensorboard_server(logdir) as (server, base):
        deadline = time.monotonic() + 90
        series = {}
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                if run in get_json(f"{base}/runs"):
                    series = {
                        tag: get_json(f"{base}/plugin/scalars/scalars?run={run}&tag={tag}")
                        for tag in ("loss", "accuracy")
                    }
                    profiles = get_json(f"{base}/plugin/profile/runs")
                    if all(series.values()) and profiles:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or still loading the run
            time.sleep(0.5)
        else:
            raise AssertionError("TensorBoard did not serve the run's loss, accuracy and profile within 90 s")
        # --profile_steps=8,16: the Profile tab lists the run's profile, with its tools; the overview page counts
        # one step per compiled call, at the calls' first steps (the schedule cuts calls at 8, 10 and 16).
        (profile_run,) = profiles
        assert profile_run.startswith(f"{run}/")
        tools = get_json(f"{base}/plugin/profile/run_tools?run={profile_run}")
        assert {"overview_page", "trace_viewer@"} <= set(tools)
        (host,) = [h["hostname"] for h in get_json(f"{base}/plugin/profile/hosts?run={profile_run}&tag=overview_page")]
        overview = get_json(f"{base}/plugin/profile/data?run={profile_run}&tag=overview_page&host={host}")
        (steps,) = [
            [row["c"][0]["v"] for row in table["rows"]]
            for table in overview
            if "stepnum" in [col["id"] for col in table.get("cols", [])]
        ]
        assert steps == ["train 8", "train 10", "train 14"]
        # The Images dashboard shows each evaluation's mistakes: the PNGs written as they are come back as PNGs.
        mistakes = get_json(f"{base}/plugin/images/images?run={run}&tag=mistakes&sample=0")
        assert [m["step"] for m in mistakes] == [step for step, accuracy in history["accuracy"] if accuracy < 1]
        with urllib.request.urlopen(f"{base}/plugin/images/individualImage?{mistakes[-1]['query']}", timeout=5) as r:
            assert Image.open(io.BytesIO(r.read())).format == "PNG"

    # Each point is [wall_time, step, value]: the same steps and values the run recorded.
    assert [(step, round(value, 5)) for _, step, value in series["loss"]] == [
        (step, round(value, 5)) for step, value in history["loss"]
    ]
    assert [step for _, step, _ in series["accuracy"]] == [0, 10, 20, 25]
    assert series["accuracy"][-1][2] == history["accuracy"][-1][1]


def assert_pictures_of_the_test_set(run_dir, final_accuracy: float, num_test: int):
    texts = svg_texts(run_dir / "confusion.svg")
    assert {"predicted digit", "true digit"} <= set(texts)
    title = next(t for t in texts if t.startswith("Confusion matrix"))
    assert title == f"Confusion matrix: {num_test} test images, accuracy {final_accuracy:.2%}"
    numbers = [int(t) for t in texts if t.isdigit()]
    assert len(numbers) == 20 + 100 and sum(numbers) - 2 * sum(range(10)) == num_test  # ticks, then the cells

    mistakes = Image.open(run_dir / "mistakes.png")
    assert mistakes.format == "PNG"
    captions = [c for c in mistakes.text["captions"].split("\n") if c]
    expected = min(40, round(num_test * (1 - final_accuracy)))
    assert len(captions) == expected
    assert all(re.fullmatch(r"\d \d+% \(true \d\)", c) and c[0] != c[-2] for c in captions)


def assert_run_described_in_tensorboard(run_dir: str, flags: dict):
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"
    table = tensor_util.MakeNdarray(acc.Tensors("config")[0].tensor_proto).item().decode()
    assert "| `--batch_size` | `32` |" in table
    assert acc.SummaryMetadata("mistakes").plugin_data.plugin_name == "images"
    assert acc.Tensors("mistakes")[0].step == 0  # at step 0 the untrained model gets most digits wrong
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["batch_size"].number_value == 32 and start.hparams["input"].string_value == flags["input"]
    replicas = max(1, flags["cpu_replicas"])
    assert start.hparams["replicas"].number_value == replicas
    assert start.hparams["global_batch_size"].number_value == 32 * replicas
    assert "cpu_replicas" not in start.hparams and "logdir" not in start.hparams  # in the config text only
    assert [e.step for e in acc.Tensors("run/wall_time_s")] == [25] and acc.Tensors("run/calibration_ece")
    assert "features" in [node.name for node in acc.Graph().node]  # the model's graph
    assert acc.SummaryMetadata("calibration").plugin_data.plugin_name == "images"
    assert [e.step for e in acc.Tensors("calibration")] == [25]  # the reliability diagram, at the last step
    for tag in ("mistakes", "calibration"):  # [width, height, PNG], as the Images dashboard reads them
        width, height, png = tensor_util.MakeNdarray(acc.Tensors(tag)[-1].tensor_proto)
        picture = Image.open(io.BytesIO(png))
        assert picture.format == "PNG" and picture.size == (int(width), int(height)) and picture.size[0] > 100


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--batch_size=0",), ("--batch_size must be a positive integer, got 0",)),
        (("--epochs=-1",), ("--epochs must be a positive integer",)),
        (("--learning_rate=0",), ("--learning_rate must be a positive finite number",)),
        (("--learning_rate=abc",), ("flag --learning_rate=abc",)),
        (("--num_gpus=-1",), ("--num_gpus must be >= 0",)),
        (("--input=gpu",), ("flag --input=gpu",)),
        (("--profile_steps=100",), ("--profile_steps must read START,END", "got '100'")),
        (("--profile_steps=300,200",), ("--profile_steps must read START,END with 0 <= START < END",)),
        (("positional",), ("unexpected arguments ['positional']",)),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(args, fragments):
    assert_one_line_error(run_module("distmnist.train", *args, timeout_s=60), *fragments)


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--seed=9223372036854775808", "--seed must be at most 9,223,372,036,854,775,807"),
        ("--steps_per_loop=100000000", "--steps_per_loop must be at most 10,000"),
        ("--run_name=" + "r" * 300, "--run_name is 300 bytes long; it must be at most 200"),
        ("--logdir=", "--logdir must not be empty"),
        ("--export_dir=", "--export_dir must not be empty"),
    ],
)
def test_unusable_values_stop_before_tensorflow_and_leave_nothing(tmp_path, tiny_npz_dir, flag, fragment):
    """Out of TensorFlow's range, or no name a filesystem takes: one line before TensorFlow is imported, and no
    claim, logdir or run directory made."""
    work = tmp_path / "work"
    work.mkdir()
    result = run_module(
        "distmnist.train",
        f"--data_dir={tiny_npz_dir}",
        f"--logdir={work / 'logs'}",
        "--run_name=r",
        *TINY_FLAGS,
        flag,
        env=without_tensorflow(tmp_path),
        timeout_s=60,
    )
    assert_one_line_error(result, fragment)
    assert os.listdir(work) == []


def test_bad_data_and_existing_runs_leave_everything_untouched(tmp_path, tiny_npz_dir):
    logdir = tmp_path / "logs"
    earlier = logdir / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text("{}")
    result = run_module(
        "distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={logdir}", "--run_name=earlier", *TINY_FLAGS
    )
    assert_one_line_error(result, "already exists and is not a distmnist run; choose another --run_name")
    assert os.listdir(earlier) == ["run.json"] and (earlier / "run.json").read_text() == "{}"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mnist.npz").write_bytes(b"PK\x03\x04truncated")
    result = run_module("distmnist.train", f"--data_dir={broken}", f"--logdir={logdir}", "--run_name=new", *TINY_FLAGS)
    assert_one_line_error(result, "not a readable .npz file")
    assert sorted(os.listdir(logdir)) == ["earlier"]

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={not_a_folder}/logs", *TINY_FLAGS)
    assert_one_line_error(result, "is not a writable folder; choose another --logdir")


def test_data_entry_point_reports_a_missing_folder():
    assert_one_line_error(
        run_module("distmnist.data", "--data_dir=/nonexistent/mnist", timeout_s=60),
        "--data_dir=/nonexistent/mnist does not exist",
    )

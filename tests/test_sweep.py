"""`python -m distmnist.sweep`: the points of a grid or a list, real runs into one logdir, a sweep stopped and run
again, a diverging point, and what TensorBoard's HParams plugin makes of it."""

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from distmnist import sweep
from distmnist.common.errors import UserError
from distmnist.runs import outputs

from helpers import REPO, run_module, tensorboard_server


def test_a_grid_crosses_the_lists_and_a_list_pairs_them():
    grid = sweep.plan({"learning_rate": "0.5,1.5", "batch_size": "64,128", "epochs": "2"}, zipped=False)
    assert [p.run_name for p in grid] == [
        "learning_rate=0.5,batch_size=64",
        "learning_rate=0.5,batch_size=128",
        "learning_rate=1.5,batch_size=64",
        "learning_rate=1.5,batch_size=128",
    ]
    assert grid[1].settings == {"learning_rate": 0.5, "batch_size": 128}
    assert grid[1].flags == {"epochs": "2", "learning_rate": "0.5", "batch_size": "128"}
    command = grid[1].command("logs/s")
    assert command[1:] == [
        "-m",
        "distmnist.train",
        "--logdir=logs/s",
        "--run_name=learning_rate=0.5,batch_size=128",
        "--epochs=2",
        "--learning_rate=0.5",
        "--batch_size=128",
    ]
    listed = sweep.plan({"learning_rate": "0.5,1.5", "seed": "1,2"}, zipped=True)
    assert [p.settings for p in listed] == [{"learning_rate": 0.5, "seed": 1}, {"learning_rate": 1.5, "seed": 2}]
    assert [p.run_name for p in sweep.plan({"epochs": "1"}, zipped=False)] == ["run"]  # nothing swept: one point


@pytest.mark.parametrize(
    "given, zipped, message",
    [
        ({"learning_rate": "0.5,abc"}, False, "--learning_rate: 'abc' is not a float"),
        ({"learning_rate": "0.5,-1"}, False, "--learning_rate must be a positive finite number, got -1.0"),
        ({"learning_rate": "0.5,1", "seed": "1,2,3"}, True, "give every swept setting the same number of values"),
        ({"seed": "1,1"}, False, "two points of the sweep are the same"),
        ({"input": "device,disk"}, False, "--input must be one of device, tfdata, got 'disk'"),
    ],
)
def test_a_bad_point_is_refused_before_anything_runs(given, zipped, message):
    with pytest.raises(UserError, match=message):
        sweep.plan(given, zipped)


def test_the_entry_point_says_what_is_wrong_in_one_line_and_writes_nothing(tmp_path):
    result = run_module("distmnist.sweep", f"--logdir={tmp_path / 'sweep'}", "--learning_rate=0.5,zero")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["distmnist.sweep: error: --learning_rate: 'zero' is not a float"]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.write_text("x"), "--logdir={d} is a file"),
        (
            lambda d: (d.mkdir(), (d / "sweep.json").write_text('{"mine": 1}')),
            "{d}/sweep.json is not a distmnist sweep's report, and a sweep writes its own there",
        ),
        (lambda d: (d.mkdir(), (d / "sweep.svg").write_text("<svg/>")), "{d}/sweep.svg is not a distmnist sweep's"),
        (
            lambda d: (d.mkdir(), (d / "sweep-logs").write_text("x")),
            "{d}/sweep-logs is not the folder of a sweep's logs",
        ),
    ],
)
def test_a_sweep_replaces_only_what_a_sweep_wrote(tmp_path, make, message):
    folder = tmp_path / "sweep"
    make(folder)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=re.escape(message.format(d=folder))):
        sweep.run_sweep({"learning_rate": "0.5,1.0"}, str(folder))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_sweeps_own_folder_is_taken_again(tmp_path):
    folder = tmp_path / "sweep"
    (folder / "sweep-logs").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"swept": [], "points": []}))
    (folder / "sweep.svg").write_text("<svg/>")
    outputs.check_sweep_folder(str(folder))


def session(group: dict) -> str:
    """A session group's run (one run per group here)."""
    return group["sessions"][0]["name"]


def post_json(url: str, body: dict):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def hparams_seen_by_tensorboard(logdir) -> tuple:
    """(the experiment, the session groups) from a real TensorBoard's HParams plugin over HTTP."""
    with tensorboard_server(logdir) as (server, data):
        base = f"{data}/plugin/hparams"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                experiment = post_json(f"{base}/experiment", {"experimentName": ""})
                groups = post_json(
                    f"{base}/session_groups",
                    {
                        "experimentName": "",
                        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
                        "colParams": [],
                        "startIndex": 0,
                        "sliceSize": 100,
                    },
                )
                good = [g for g in groups.get("sessionGroups", []) if session(g).startswith("learning_rate=0.5,")]
                if len(good) == 2 and all(g.get("metricValues") for g in good):
                    return experiment, groups["sessionGroups"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise AssertionError("TensorBoard's HParams plugin did not list the sweep within 90 s")


@pytest.mark.slow
def test_a_sweep_stopped_half_way_finishes_its_missing_points_and_fills_the_hparams_dashboard(tmp_path, tiny_npz_dir):
    logdir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "distmnist.sweep",
        f"--logdir={logdir}",
        f"--data_dir={tiny_npz_dir}",
        "--learning_rate=0.5,50",
        "--seed=1,2",
        "--batch_size=16",
        "--max_steps=120",
        "--log_every=20",
        "--eval_every=60",
        "--checkpoint_every=4",
        "--steps_per_loop=4",
    ]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = logdir / "learning_rate=0.5,seed=1" / "run.json"
    second = logdir / "learning_rate=0.5,seed=2"
    deadline = time.monotonic() + 120
    while not list(second.glob("**/ckpt-*.index")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.exists() and not (second / "run.json").exists(), first.communicate()[1][-3000:]
    first.send_signal(signal.SIGTERM)  # the second point is training: it stops with a checkpoint
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-3000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "distmnist.sweep: stopped by SIGTERM with 3 point(s) left; run the same command to finish the sweep"
        )
    )
    finished_at = done.stat().st_mtime_ns

    again = subprocess.run([*command, "--parallel=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep: 4 points in" in again.stdout and "1 already done, 3 to run, 2 at a time" in again.stdout
    assert done.stat().st_mtime_ns == finished_at  # the finished point did not run again
    report = json.loads((logdir / "sweep.json").read_text())
    by_name = {p["run_name"]: p for p in report["points"]}
    assert report["swept"] == ["learning_rate", "seed"]
    for name in ("learning_rate=0.5,seed=1", "learning_rate=0.5,seed=2"):
        assert by_name[name]["status"] == "ok" and 0 < by_name[name]["final_test_accuracy"] <= 1
    for name in ("learning_rate=50,seed=1", "learning_rate=50,seed=2"):  # diverge; the others go on
        assert by_name[name]["status"] == "failed" and by_name[name]["exit_status"] == 1
        assert by_name[name]["reason"].startswith("the loss or a gradient became non-finite at step ")
    resumed = (logdir / "sweep-logs" / "learning_rate=0.5,seed=2.log").read_text()
    assert "resuming from step" in resumed  # the point stopped half-way went on from its checkpoint
    rows = again.stdout.split("wall s\n")[1].splitlines()[:4]  # the table: best first, failed last
    assert [r.split()[0] for r in rows[:2]] == sorted(
        ["learning_rate=0.5,seed=1", "learning_rate=0.5,seed=2"], key=lambda n: -by_name[n]["final_test_accuracy"]
    )
    assert all("failed: the loss or a gradient became non-finite" in r for r in rows[2:])
    svg = (logdir / "sweep.svg").read_text()
    assert "learning_rate" in svg and "seed" in svg and "2 failed (not shown)" in svg

    experiment, groups = hparams_seen_by_tensorboard(logdir)
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert {"learning_rate", "batch_size", "global_batch_size", "replicas", "xla"} <= set(hparams)
    assert not {"logdir", "data_dir", "overwrite", "collective_timeout_s"} & set(hparams)  # in the config text only
    assert hparams["learning_rate"]["type"] == "DATA_TYPE_FLOAT64" and hparams["input"]["type"] == "DATA_TYPE_STRING"
    assert hparams["learning_rate"]["differs"] and hparams["seed"]["differs"]
    assert not hparams["batch_size"].get("differs") and not hparams["input"].get("differs")
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"accuracy", "loss", "examples_per_sec", "run/wall_time_s", "run/calibration_ece"} <= metrics
    good = [g for g in groups if session(g).startswith("learning_rate=0.5,")]
    assert len(good) == 2
    for group in good:
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["accuracy"] == pytest.approx(by_name[session(group)]["final_test_accuracy"])
        assert values["run/wall_time_s"] > 0 and values["examples_per_sec"] > 0

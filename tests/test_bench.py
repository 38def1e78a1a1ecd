"""`python -m bench --quick`: every contender runs, the report has its contract (no timing asserts) and the results
file says the run's figures; the machine's kind that names that file."""

import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import subprocess
import xml.etree.ElementTree as ET
import zipfile

import pytest

from bench import machine
from bench import report as report_lib
from bench.contenders import jax_scan, pytorch_eager
from distmnist.training import devices

from helpers import REPO, run_module, run_python

pytestmark = [pytest.mark.slow]

CONTENDERS = {
    "compute bound",
    "tutorial eager",
    "keras fit (default)",
    "keras fit (tuned)",
    "distmnist --input=tfdata",
    "distmnist (default)",
    "distmnist (default, own process)",
    "jax scan",
}  # the test extra brings JAX


def results_files() -> dict:
    """{name: (size, mtime)} of what bench/results holds now."""
    folder = report_lib.RESULTS_DIR
    return {
        name: (os.stat(os.path.join(folder, name)).st_size, os.stat(os.path.join(folder, name)).st_mtime_ns)
        for name in (os.listdir(folder) if os.path.isdir(folder) else [])
    }


def test_quick_bench_writes_a_complete_report(tmp_path):
    before = results_files()
    result = run_module("bench", "--quick", f"--out={tmp_path}", timeout_s=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert results_files() == before  # --quick: no machine's figures, bench/results untouched
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.svg"]

    assert set(report["machine"]) == {
        "cpu",
        "cpu_features",
        "cores",
        "gpus",
        "kind",
        "python",
        "tf_version",
        "jax_version",
        "torch_version",
    }
    assert report["machine"]["cores"] >= 1 and report["machine"]["tf_version"].startswith("2.")
    assert report["machine"]["kind"] == machine.cpu_kind(*machine.read_cpuinfo(), platform.machine())
    assert report["machine"]["jax_version"] == importlib.metadata.version("jax")  # the test extra brings JAX
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
    assert report["run"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert report["run"]["seconds"] > 0 and report["run"]["started"] < report["run"]["finished"]
    rows = report["results"]
    assert {r["name"] for r in rows} == CONTENDERS and {r["replicas"] for r in rows} == {1}  # --quick: one count
    own_process = {"distmnist (default, own process)", "jax scan"}  # paired turns: the median counts
    for row in rows:
        assert set(row) == {"name", "replicas", "device", "per_replica_batch_size", "examples_per_sec", "rounds"}
        assert row["per_replica_batch_size"] == 128 and row["examples_per_sec"] > 0
        if row["name"] in own_process:
            assert len(row["rounds"]) == 2 and row["examples_per_sec"] == pytest.approx(sum(row["rounds"]) / 2)
        else:
            assert row["examples_per_sec"] == max(row["rounds"])
            assert len(row["rounds"]) == report["settings"]["rounds"]

    ours = next(r["examples_per_sec"] for r in rows if r["name"] == "distmnist (default)" and r["replicas"] == 1)
    keras = next(r["examples_per_sec"] for r in rows if r["name"] == "keras fit (default)" and r["replicas"] == 1)
    assert set(report["ratios"]) == {
        "vs_keras_default",
        "vs_keras_tuned",
        "vs_tutorial_eager",
        "of_compute_bound",
        "vs_jax_scan",
    }
    assert abs(report["ratios"]["vs_keras_default"] - ours / keras) < 1e-9
    jax, solo = (
        next(r["rounds"] for r in rows if r["name"] == name)
        for name in ("jax scan", "distmnist (default, own process)")
    )
    paired = [s / j for s, j in zip(solo, jax, strict=True)]
    by_turns = report["distmnist_over_jax"]
    assert by_turns["turns"] == 2 and set(by_turns["by_replicas"]) == {"1"}
    assert by_turns["by_replicas"]["1"]["ratios"] == pytest.approx(paired)
    assert by_turns["by_replicas"]["1"]["median"] == pytest.approx(sum(paired) / 2)
    assert report["ratios"]["vs_jax_scan"] == by_turns["by_replicas"]["1"]["median"]
    assert "distmnist default / jax scan, each in its own process, paired turns: 1 replica(s) median" in result.stdout

    # The step breakdown: one profiled round of each in quick mode, XLA's kernels read from real traces.
    split = report["step_breakdown"]
    assert set(split["rounds"]) == set(split["median"]) == {"distmnist", "jax"}
    for name, (only,) in split["rounds"].items():
        assert split["median"][name] == only and only["steps"] == 50
        assert 0 < only["in_xla_us"] <= only["wall_us"]
        assert only["outside_us"] == pytest.approx(only["wall_us"] - only["in_xla_us"])
        assert any(kernel.startswith("ynn_fusion") for kernel, _ in only["top"])  # YNNPACK's dots in both
        assert 0 < sum(us for _, us in only["top"]) <= only["in_xla_us"]
    assert "step breakdown, one CPU replica" in result.stdout
    assert "two_replicas" not in split  # --quick: one replica count

    torch = importlib.util.find_spec("torch") is not None  # an optional extra: its absence is said in one line
    race = report["time_to_accuracy"]["by"]
    assert set(race) == {"distmnist (default)", "keras fit (tuned)", "jax scan", *(["pytorch eager"] if torch else [])}
    assert race["distmnist (default)"]["accuracy"] >= report["time_to_accuracy"]["target"] == 0.90
    assert report["time_to_accuracy"]["rounds"] == 1  # --quick: one round
    for r in race.values():
        assert set(r) == {"seconds", "rounds", "epochs", "accuracy"} and r["epochs"] == 1 and len(r["rounds"]) == 1
        assert r["seconds"] == r["rounds"][0] and (r["seconds"] is None) == (r["accuracy"] < 0.90)

    # The precisions: every precision at batch 128 and 512, each contender once in quick mode (JAX has no float16
    # dots on CPUs), and the race in each mixed precision.
    section = report["precisions"]
    made = {(r["name"], r["precision"], r["batch"]) for r in section["rows"]}
    bf16 = devices.support_of([]).native["mixed_bfloat16"]
    expected = {
        (name, precision, batch)
        for batch in (128, 512)
        for precision in ("float32", "mixed_bfloat16", "mixed_float16")
        for name in ("distmnist", "keras fit (tuned)", "jax scan", *(["pytorch eager"] if torch else []))
        if not (name in ("jax scan", "pytorch eager") and precision == "mixed_float16")
        and not (name == "pytorch eager" and precision == "mixed_bfloat16" and not bf16)
    }
    assert set(section["skipped"]) == (
        {"pytorch eager"} if not torch else set() if bf16 else {"pytorch eager mixed_bfloat16"}
    )
    assert torch or f"pytorch eager: skipped, {pytorch_eager.NOT_INSTALLED}" in result.stdout
    assert made == expected and all(r["examples_per_sec"] > 0 and len(r["rounds"]) == 1 for r in section["rows"])
    for batch, by in section["ratios"].items():
        fastest_other = max(
            r["examples_per_sec"] for r in section["rows"] if r["batch"] == int(batch) and r["name"] != "distmnist"
        )
        ours = {
            r["precision"]: r["examples_per_sec"]
            for r in section["rows"]
            if r["batch"] == int(batch) and r["name"] == "distmnist"
        }
        assert by == pytest.approx({p: v / fastest_other for p, v in ours.items()})
        assert section["over_float32"][batch] == pytest.approx(
            {p: v / ours["float32"] for p, v in ours.items() if p != "float32"}
        )  # one round in quick mode
    assert set(section["race"]) == {"mixed_bfloat16", "mixed_float16"}
    assert set(section["race"]["mixed_float16"]) == {"distmnist", "keras fit (tuned)"}
    assert set(section["race"]["mixed_bfloat16"]) == {
        "distmnist",
        "keras fit (tuned)",
        "jax scan",
        *(["pytorch eager"] if torch and bf16 else []),
    }
    assert "precisions, one replica" in result.stdout and "mixed precisions over its float32" in result.stdout
    # Per batch, each contender at its fastest precision, and distmnist's best over it.
    assert set(section["best"]) == {"128", "512"}
    for batch, by in section["best"].items():
        at = [r for r in section["rows"] if r["batch"] == int(batch)]
        assert set(by) == {r["name"] for r in at}
        for name, b in by.items():
            fastest = max((r for r in at if r["name"] == name), key=lambda r: r["examples_per_sec"])
            assert (b["precision"], b["examples_per_sec"]) == (fastest["precision"], fastest["examples_per_sec"])
            assert b["ratio"] == pytest.approx(by["distmnist"]["examples_per_sec"] / b["examples_per_sec"])
        assert f"batch {batch}: distmnist's best ({by['distmnist']['precision']}, " in result.stdout

    root = ET.parse(tmp_path / "bench.svg").getroot()
    texts = {t.text for t in root.iter() if t.tag.endswith("text") and t.text}
    assert "examples/second (higher is better)" in texts
    assert "distmnist (default) (1x CPU)" in texts
    assert "compute bound" in result.stdout and "vs_keras_default" in result.stdout

    # The checkpoint section: two paired rounds of 10-step blocks in quick mode.
    saves = report["checkpoints"]
    assert (saves["every"], saves["rounds"], saves["goal"]) == (10, 2, 0.03)
    assert saves["block_s"] > 0 and saves["block_with_save_s"] > 0
    assert saves["cost_fraction"] == pytest.approx(saves["cost_s"] / saves["block_s"])
    assert saves["cpu_block_s"] > 0 and saves["cpu_cost_fraction"] == pytest.approx(
        saves["cpu_cost_s"] / saves["cpu_block_s"]
    )
    # a save's own seconds, counted: the caller's and its writer thread's CPU, more than nothing
    assert saves["own_s"] > 0 and saves["own_fraction"] == pytest.approx(saves["own_s"] / saves["cpu_block_s"])
    assert "checkpoints every 10 steps (median of 2 paired rounds)" in result.stdout

    # The whole-process section: each command once in quick mode, distmnist's parts from its run.json.
    whole = report["whole_process"]
    assert whole["rounds"] == 1 and set(whole["seconds"]) == {
        "tensorflow import",
        "distmnist.train",
        "keras fit script",
    }
    m = whole["median_s"]
    assert all(len(v) == 1 and v[0] == m[k] > 0 for k, v in whole["seconds"].items())
    assert whole["keras_over_distmnist"] == pytest.approx(m["keras fit script"] / m["distmnist.train"])
    assert whole["outside_over_import"] == pytest.approx(whole["distmnist_outside_training_s"] / m["tensorflow import"])
    parts = whole["distmnist_timings"]
    assert whole["distmnist_outside_training_s"] > parts["imports_s"] > 0 and parts["steps_s"] > 0
    assert 0 < whole["accuracy"]["distmnist.train"] <= 1 and 0 < whole["accuracy"]["keras fit script"] <= 1
    assert "Keras script / distmnist:" in result.stdout and "the bare import (goal <= 1.3x)" in result.stdout

    check_results_file(report, tmp_path / "results")


def markdown_sections(text: str) -> dict:
    """{heading: [each table row's cells]} of a Markdown file, the "## " headings' sections (the title's: "")."""
    sections, heading = {"": []}, ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
            sections[heading] = []
        elif line.startswith("|") and not line.startswith("|---"):
            sections[heading].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return sections


def section(sections: dict, start: str) -> list:
    (rows,) = [rows for heading, rows in sections.items() if heading.startswith(start)]
    return rows


def check_results_file(report: dict, folder) -> None:
    """The results file the quick run's report makes (in a temporary folder: a quick run writes none of its own)
    holds every section's figures from the report, in tables, with the run's date, commit and machine."""
    path = report_lib.write(report, str(folder))
    assert path == str(folder / f"{report['machine']['kind']}.md") and os.listdir(folder) == [os.path.basename(path)]
    text = open(path).read()
    assert text.startswith(f"# Bench results: {report['machine']['kind']}\n")
    sections = markdown_sections(text)
    run = dict(map(tuple, sections[""][1:]))  # the title's table: the run
    m = report["machine"]
    assert run["date"].startswith(f"{report['run']['started']} to {report['run']['finished']}")
    assert run["commit"].startswith(f"`{report['run']['commit']}`, ")
    assert run["CPU"] == f"{m['cpu']}, {m['cores']} cores" and run["TensorFlow"] == m["tf_version"]
    assert run["JAX"] == m["jax_version"] and run["PyTorch"] == (m["torch_version"] or "not installed")
    assert run["CPU features"].startswith(", ".join(m["cpu_features"]))

    steady = section(sections, "Steady state")
    for r in report["results"]:
        assert [r["name"], str(r["replicas"]), r["device"], f"{r['examples_per_sec']:,.0f}"] in [
            row[:4] for row in steady
        ]
    assert {row[1] for row in steady if len(row) == 2} >= {f"{v:.2f}" for v in report["ratios"].values()}
    by = report["distmnist_over_jax"]["by_replicas"]["1"]
    assert section(sections, "distmnist's default over JAX")[1][:2] == ["1", f"{by['median']:.3f}"]
    split = section(sections, "Step breakdown")
    for name, b in report["step_breakdown"]["median"].items():
        assert [name, f"{b['wall_us']:,.0f}", f"{b['in_xla_us']:,.0f}", f"{b['outside_us']:,.0f}"] in split
        assert [f"`{b['top'][0][0]}`", f"{b['top'][0][1]:,.0f}"] in split
    race = section(sections, "Time to 90.0%")
    for name, r in report["time_to_accuracy"]["by"].items():
        seconds = "not reached" if r["seconds"] is None else f"{r['seconds']:.1f}"
        assert [
            name,
            seconds,
            "-" if r["seconds"] is None else seconds,
            str(r["epochs"]),
            f"{r['accuracy']:.2%}",
        ] in race
    precisions = section(sections, "Precisions")
    for r in report["precisions"]["rows"]:
        row = next(row for row in precisions if row[:2] == [r["name"], r["precision"]])
        assert row[2 + [128, 512].index(r["batch"])] == f"{r['examples_per_sec']:,.0f}"  # a column per batch
    for batch, by in report["precisions"]["best"].items():
        ours = by["distmnist"]
        for name, b in by.items():
            if name != "distmnist":
                assert [
                    batch,
                    f"{ours['precision']} ({ours['examples_per_sec']:,.0f})",
                    name,
                    f"{b['precision']} ({b['examples_per_sec']:,.0f})",
                    f"{b['ratio']:.2f}x",
                ] in precisions
    saves = report["checkpoints"]
    assert section(sections, "Checkpoints")[1][4:6] == [f"{saves['cost_s'] * 1e3:.1f}", f"{saves['cost_fraction']:.1%}"]
    assert section(sections, "Checkpoints")[1][7:] == [
        f"{saves['cpu_cost_s'] * 1e3:.1f}",
        f"{saves['cpu_cost_fraction']:.1%}",
        f"{saves['own_s'] * 1e3:.1f}",
        f"{saves['own_fraction']:.1%}",
    ]
    whole, process = section(sections, "Whole process"), report["whole_process"]
    median = f"{process['median_s']['distmnist.train']:.1f}"  # one round: its only round
    assert [
        "`python -m distmnist.train` (defaults)",
        median,
        median,
        f"{process['accuracy']['distmnist.train']:.2%}",
    ] in whole
    assert [f"{process['keras_over_distmnist']:.2f}x", ">= 1.8x"] in [row[1:] for row in whole]


SOLO_ARGS = ["--replicas=2", "--batch_size=16", "--steps=20", "--learning_rate=0.5"]


def test_the_jax_contender_trains_on_two_devices_in_its_own_process(tmp_path):
    """JAX's scan as the bench runs it really trains (the loss falls below what any constant guess scores) on
    two CPU devices, in a process of its own (the quick bench runs it and distmnist's own-process contender on
    one device)."""
    import subprocess
    import sys

    import numpy as np

    from bench import ownprocess

    from helpers import make_tiny_mnist

    npz = tmp_path / "mnist.npz"
    np.savez(npz, **make_tiny_mnist().arrays())
    run = [sys.executable, "-m", "bench.solo", "--contender=jax", f"--npz={npz}", *SOLO_ARGS]
    trained = subprocess.run(
        run, env=ownprocess.environment("jax", 2), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    report = json.loads(trained.stdout.strip().splitlines()[-1])
    assert len(report["devices"]) == 2 and report["examples_per_sec"] > 0
    assert 0 < report["final_loss"] < 0.05  # the MSE of the best constant guess is 0.09


def test_the_bench_starts_its_own_processes_in_its_checkout_wherever_it_was_started(tmp_path, tiny_mnist):
    """The bench is not installed: it runs from the checkout. Started from another folder, with nothing on
    PYTHONPATH, its contenders' processes (`python -m bench.solo`) still find the bench, as they start in the
    checkout."""
    import numpy as np

    npz = tmp_path / "mnist.npz"
    np.savez(npz, **tiny_mnist.arrays())
    code = (
        f"import json, sys; sys.path.insert(0, {REPO!r}); from bench import ownprocess; "
        "from bench.timing import Timing; "
        f"print(json.dumps(ownprocess.measure('jax', {str(npz)!r}, Timing(per_replica_batch_size=16, "
        "timed_steps=5))))"
    )
    result = run_python(code, timeout_s=300, unset=("PYTHONPATH",))  # in /, outside the checkout
    assert result.returncode == 0, result.stderr[-2000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["examples_per_sec"] > 0 and reply["devices"] == ["cpu:0"]  # JAX's CPU device


def test_without_jax_the_jax_contender_says_so(tmp_path):
    import subprocess
    import sys

    args = ["--contender=jax", f"--npz={tmp_path / 'unused.npz'}", *SOLO_ARGS]
    hidden = [
        sys.executable,
        "-c",
        "import runpy, sys; sys.modules['jax'] = None; "
        f"sys.argv = ['solo', *{args!r}]; runpy.run_module('bench.solo', run_name='__main__')",
    ]
    missing = subprocess.run(hidden, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing.returncode == 0 and json.loads(missing.stdout) == {"skipped": jax_scan.NOT_INSTALLED}


def test_a_jax_without_a_gpu_backend_is_skipped_on_gpus_with_one_line(tmp_path):
    """PyPI's jax has its CPU backend only: asked for GPUs (as the bench is on a GPU machine), the JAX contender
    says so, naming the extra that brings CUDA's, and the bench goes on without it."""
    import subprocess
    import sys

    from bench import ownprocess

    args = ["--contender=jax", f"--npz={tmp_path / 'unused.npz'}", "--platform=gpu", *SOLO_ARGS]
    asked = subprocess.run(
        [sys.executable, "-m", "bench.solo", *args],
        env=ownprocess.environment("jax", 1, "gpu"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert json.loads(asked.stdout) == {"skipped": jax_scan.NO_BACKEND.format(platform="gpu")}
    assert "pip install -e '.[bench-gpu]'" in jax_scan.NO_BACKEND


def test_bad_counts_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    for bad in (
        "--rounds=0",
        "--turns=0",
        "--checkpoint_every=0",
        "--checkpoint_rounds=-1",
        "--breakdown_rounds=-1",
        "--precision_rounds=-1",
        "--race_rounds=0",
    ):
        result = run_module("bench", bad, f"--out={out}")
        assert result.returncode == 2, bad
        assert result.stderr.strip().splitlines() == [
            "bench: error: --batch_size, --steps, --rounds, --turns, --race_rounds and --checkpoint_every "
            "must be positive, --warmup_steps, --checkpoint_rounds, --process_rounds, --breakdown_rounds and "
            "--precision_rounds >= 0"
        ], bad
        assert not out.exists()


def test_a_contender_that_fails_is_named_with_its_last_line(tmp_path):
    from bench import turns
    from bench.timing import Timing
    from distmnist.common.errors import RunFailed

    timing = Timing(per_replica_batch_size=16, timed_steps=20)
    with pytest.raises(RunFailed, match=r"the distmnist contender in its own process failed: .*No such file"):
        turns.take_turns(str(tmp_path / "missing.npz"), 1, "cpu", timing, 2)


def test_without_pytorch_its_contender_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    args = ["--contender=torch", f"--npz={tmp_path / 'unused.npz'}", "--batch_size=16", "--steps=5"]
    hidden = [
        sys.executable,
        "-c",
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = ['solo', *{args!r}]; runpy.run_module('bench.solo', run_name='__main__')",
    ]
    missing = subprocess.run(hidden, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing.returncode == 0 and json.loads(missing.stdout) == {"skipped": pytorch_eager.NOT_INSTALLED}
    assert missing.stderr == ""


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_the_pytorch_contender_trains(tmp_path, tiny_mnist, precision):
    """Where PyTorch is installed (its CPU build; an optional extra like JAX's): its eager loop, with and without
    bfloat16 autocast, really trains (the loss falls below what any constant guess scores)."""
    pytest.importorskip("torch")
    import numpy as np

    npz = tmp_path / "mnist.npz"
    np.savez(npz, **tiny_mnist.arrays())
    result = run_module(
        "bench.solo",
        "--contender=torch",
        f"--npz={npz}",
        "--batch_size=32",
        "--steps=200",
        "--learning_rate=0.5",
        f"--precision={precision}",
        timeout_s=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["examples_per_sec"] > 0 and 0 < reply["final_loss"] < 0.05  # the best constant guess: 0.09


@pytest.mark.parametrize("contender", ["distmnist", "jax", "torch"])
def test_each_contender_races_to_a_test_accuracy_in_its_own_process(tmp_path, tiny_mnist, contender):
    """solo.py's race: epochs until the whole test set's accuracy reaches the target, the time from the first step
    to that check the sum of the epochs' (the checks included); an unreachable target runs max_epochs and says
    so (seconds null)."""
    if contender == "torch":
        pytest.importorskip("torch")
    import numpy as np

    npz = tmp_path / "mnist.npz"
    np.savez(npz, **tiny_mnist.arrays())
    args = [f"--contender={contender}", f"--npz={npz}", "--batch_size=32", "--learning_rate=0.5"]
    for target, max_epochs in ((0.9, 20), (1.01, 2)):
        result = run_module(
            "bench.solo", *args, f"--target_accuracy={target}", f"--max_epochs={max_epochs}", timeout_s=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        reply = json.loads(result.stdout.strip().splitlines()[-1])
        laps = reply["epoch_seconds"]
        assert len(laps) == reply["epochs"] <= max_epochs and all(lap > 0 for lap in laps)
        if target <= 1:
            assert reply["accuracy"] >= target and reply["seconds"] == pytest.approx(sum(laps))
        else:
            assert reply["seconds"] is None and reply["epochs"] == max_epochs and 0 <= reply["accuracy"] <= 1


def test_the_race_rotates_its_order_and_counts_each_contenders_median_round(monkeypatch):
    """Each round races every contender in turn, starting one further along each time (the machine drifts); a
    contender's figure is its median round, none where a round did not reach the target."""
    from bench import race

    from helpers import trainer_settings

    laps = {"a": [9.0, 7.0, 8.0], "b": [5.0, None, 6.0], "c": [3.0, 4.0, 2.0]}
    order = []

    def one(mnist, strategy_fn, target, max_epochs, settings, npz, platform, name):
        order.append(name)
        seconds = laps[name][sum(n == name for n in order) - 1]
        return seconds, 7 if seconds else max_epochs, 0.981 if seconds else 0.97

    monkeypatch.setattr(race, "_one", one)
    by = race.contest(None, None, 0.98, 15, trainer_settings(), None, "cpu", ["a", "b", "c"], rounds=3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert by["a"] == {"rounds": [9.0, 7.0, 8.0], "seconds": 8.0, "epochs": 7, "accuracy": 0.981}
    assert by["b"]["seconds"] is None and by["b"]["rounds"] == [5.0, None, 6.0]
    assert by["c"]["seconds"] == 3.0
    assert race.lap_times(by) == (
        "a 8.0 s (7 epochs, rounds 9.0 7.0 8.0); b not reached in every round, rounds "
        "5.0 - 6.0; c 3.0 s (7 epochs, rounds 3.0 4.0 2.0)"
    )


def test_a_bad_or_hostile_npz_is_one_line_from_every_contender(tmp_path):
    """solo.py reads the bench's npz as distmnist reads any MNIST file: a missing file, one that is not an npz, one
    whose array is a pickle (code it would run on loading) and one whose header declares terabytes are each one
    stderr line naming the file, exit 2, nothing allocated or unpickled, before any framework starts."""
    import numpy as np
    from numpy.lib import format as npy_format

    missing, junk, pickled, huge = (tmp_path / f"{name}.npz" for name in ("missing", "junk", "pickled", "huge"))
    junk.write_bytes(b"not a zip")
    np.savez(pickled, x_train=np.array([object()], dtype=object))
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(huge, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + bytes(64))
    for npz, why in (
        (missing, "No such file or directory"),
        (junk, "not a readable .npz file"),
        (pickled, "only pickle can load"),
        (huge, "its header declares"),
    ):
        for contender in ("distmnist", "jax"):
            result = run_module(
                "bench.solo",
                f"--contender={contender}",
                f"--npz={npz}",
                "--target_accuracy=0.9",
                unset=("TF_CPP_MIN_LOG_LEVEL",),
            )
            assert result.returncode == 2 and result.stdout == "", (contender, npz, result.stderr[-2000:])
            (line,) = result.stderr.splitlines()
            assert line.startswith("bench.solo: error: ") and str(npz) in line and why in line, line

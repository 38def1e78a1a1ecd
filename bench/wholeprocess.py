"""The bench's whole-process section: what a user waits for, from the command to the finished model.

Three commands, each a fresh process timed from outside, in rounds that rotate their order (shared machines
drift over minutes; each round gives every command a turn early and late):
  - `python -c "import tensorflow"`: the floor every TensorFlow program pays;
  - `python -m distmnist.train` at its defaults (10 epochs, evaluations, checkpoints, SavedModel, pictures);
  - keras_fit_script.py: the same model, data, epochs and learning rate with Keras `fit`, then `evaluate`.
Medians over the rounds; distmnist's own breakdown (run.json `timings`) from its median round.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import CHECKOUT
from distmnist.common.errors import RunFailed
from distmnist.data.dataset import keras_cache_path

KERAS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras_fit_script.py")
QUICK_STEPS = 30  # --quick: a smoke run of each command, no meaningful figures
RATIO_GOAL = 1.8  # Keras script's wall time over distmnist's
OUTSIDE_GOAL = 1.3  # distmnist's time outside the training steps over the bare import


def _run(name: str, command: list) -> tuple:
    """(wall seconds, stdout) of one command; RunFailed with its last line of stderr when it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=CHECKOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunFailed(f"the whole-process bench's {name} run failed (exit {result.returncode}): {last}")
    return seconds, result.stdout


def commands(logdir: str, round_number: int, data_dir: str | None, quick: bool) -> dict:
    data = [f"--data_dir={data_dir}"] if data_dir else []
    # The file distmnist reads (the Keras cache holds it, but in a layout whose checksum Keras's own
    # load_data rejects when it came from the offline mirror).
    npz = os.path.join(data_dir, "mnist.npz") if data_dir else str(keras_cache_path())
    short = [f"--max_steps={QUICK_STEPS}", "--eval_every=10"] if quick else []
    keras_short = ["--epochs=1", f"--steps={QUICK_STEPS}"] if quick else []
    return {
        "tensorflow import": [sys.executable, "-c", "import tensorflow"],
        "distmnist.train": [
            sys.executable,
            "-m",
            "distmnist.train",
            f"--logdir={logdir}",
            f"--run_name=round{round_number}",
            *data,
            *short,
        ],
        "keras fit script": [sys.executable, KERAS_SCRIPT, f"--data={npz}", *keras_short],
    }


def measure(rounds: int, data_dir: str | None = None, quick: bool = False, say=print) -> dict:
    """Times the three commands `rounds` times each; returns what bench.json's `whole_process` holds."""
    times = {}
    runs = []  # distmnist's run.json of each round
    keras_accuracy = []
    with tempfile.TemporaryDirectory(prefix="distmnist-bench-") as logdir:
        for round_number in range(1, rounds + 1):
            todo = list(commands(logdir, round_number, data_dir, quick).items())
            shift = (round_number - 1) % len(todo)
            for name, command in todo[shift:] + todo[:shift]:
                seconds, stdout = _run(name, command)
                times.setdefault(name, []).append(seconds)
                if name == "distmnist.train":
                    with open(os.path.join(logdir, f"round{round_number}", "run.json")) as f:
                        run = json.load(f)
                    runs.append(
                        {
                            "wall_s": seconds,
                            "train_time_s": run["train_time_s"],
                            "accuracy": run["final_test_accuracy"],
                            "timings": run["timings"],
                        }
                    )
                elif name == "keras fit script":
                    keras_accuracy.append(float(stdout.strip().splitlines()[-1].split()[-1]))
                say(f"  round {round_number}: {name:<20} {seconds:7.1f} s")
    medians = {name: statistics.median(values) for name, values in times.items()}
    median_run = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    outside = [r["wall_s"] - r["train_time_s"] for r in runs]  # everything but the compiled calls
    return {
        "rounds": rounds,
        "seconds": times,
        "median_s": medians,
        "keras_over_distmnist": medians["keras fit script"] / medians["distmnist.train"],
        "ratio_goal": RATIO_GOAL,
        "distmnist_outside_training_s": statistics.median(outside),
        "outside_over_import": statistics.median(outside) / medians["tensorflow import"],
        "outside_goal": OUTSIDE_GOAL,
        "accuracy": {"distmnist.train": median_run["accuracy"], "keras fit script": statistics.median(keras_accuracy)},
        "distmnist_timings": median_run["timings"],
    }


def table(section: dict) -> str:
    """The bench table's lines for this section."""
    m, acc = section["median_s"], section["accuracy"]
    timings = section["distmnist_timings"]
    parts = ", ".join(
        f"{name.removesuffix('_s').replace('_', ' ')} {value:.1f}"
        for name, value in timings.items()
        if value and name != "total_s"
    )
    return "\n".join(
        [
            f"whole process, median of {section['rounds']} round(s), seconds from the command to the finished model:",
            f"  python -c 'import tensorflow'  {m['tensorflow import']:7.1f}",
            f"  distmnist.train (defaults)     {m['distmnist.train']:7.1f}  test accuracy {acc['distmnist.train']:.2%}",
            f"  Keras fit script               {m['keras fit script']:7.1f}  "
            f"test accuracy {acc['keras fit script']:.2%}",
            f"  Keras script / distmnist: {section['keras_over_distmnist']:.2f}x (goal >= {section['ratio_goal']}x)",
            f"  distmnist outside the training steps: {section['distmnist_outside_training_s']:.1f} s = "
            f"{section['outside_over_import']:.2f}x the bare import (goal <= {section['outside_goal']}x)",
            f"  distmnist's parts (s): {parts}",
        ]
    )

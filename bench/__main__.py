"""Benchmark: distmnist against the other ways of training this MLP, on this machine, now. From the checkout:

  python -m bench            # writes bench.json and bench.svg (--out), and bench/results/<kind>.md (machine.py)
  python -m bench --quick    # a smoke test: one round of a few steps each, one replica count; no results file

Contenders, each at the same per-replica batch after a warm-up: the tutorial's eager loop, Keras Model.fit (default
and tuned), distmnist --input=tfdata, distmnist's default, and where JAX is installed (the `bench` extra) JAX's
compiled scan against distmnist's default, each in a fresh process of its own (solo.py), and the compute bound (a
large matmul's FLOP/s over 2.41 MFLOP per example); for 1 and 2 CPU replicas, or 1..N GPUs. All of them are timed in
turn, --rounds times, and each one's best round counts. Where JAX is installed, on a CPU, the step breakdown: where
the step goes in each of those two, on one replica and on two, kernel by kernel in XLA's executables or outside
them, and the all-reduce between two replicas (breakdown.py, xlaprofile.py).
Then time to 98% test accuracy (JAX and PyTorch too, where installed). Then what checkpoints cost the training
(checkpointcost.py). Then the whole process (wholeprocess.py): `python -m distmnist.train` at its defaults against a
Keras fit script doing the same training, and a bare `import tensorflow`, each a fresh process timed from outside,
--process_rounds times. A full run's figures go to bench/results/<kind>.md (report.py), with its date, commit and
machine; docs/performance.md says how to read them.
"""

import dataclasses
import gc
import importlib.util
import os
import shutil
import tempfile

from absl import flags

from bench import machine, wholeprocess
from bench import report as report_lib
from distmnist.common import cli, files
from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError
from distmnist.environment import tfquiet

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", ".", "Folder for bench.json and bench.svg.")
    flags.DEFINE_boolean(
        "quick",
        False,
        "A short smoke run: few steps, one replica count, accuracy target 90% "
        "within one epoch, one whole-process round of short runs.",
    )
    flags.DEFINE_integer("batch_size", 128, "Per-replica batch size for every contender.")
    flags.DEFINE_integer("steps", 400, "Timed steps per contender.")
    flags.DEFINE_integer("warmup_steps", 50, "Untimed steps first (tracing, compiling, caches).")
    flags.DEFINE_integer("rounds", 3, "Times each contender is measured, all contenders in turn; the best counts.")
    flags.DEFINE_integer(
        "turns",
        16,
        "Turns that distmnist's default and JAX's scan take, each in a process of its "
        "own, for each replica count (where JAX is installed); the median paired ratio counts.",
    )
    flags.DEFINE_integer(
        "breakdown_rounds",
        3,
        "Rounds of the step breakdown: distmnist's default and JAX's scan "
        "on one CPU replica and on two (--quick: one), each profiled in a process of its own with "
        "XLA's kernel events, alternating (where JAX is installed and there is no GPU); 0 skips it.",
    )
    flags.DEFINE_integer("max_epochs", 15, "Give up the time-to-accuracy race after this many epochs.")
    flags.DEFINE_integer(
        "race_rounds",
        3,
        "Rounds of each time-to-accuracy race (every contender in turn, the order "
        "rotating); each contender's median round counts.",
    )
    flags.DEFINE_string("data_dir", None, "As for distmnist.train.")
    flags.DEFINE_integer(
        "checkpoint_rounds",
        30,
        "Paired rounds of the checkpoint section (training with and "
        "without a checkpoint every --checkpoint_every steps); 0 skips it.",
    )
    flags.DEFINE_integer("checkpoint_every", TrainConfig.checkpoint_every, "Steps between checkpoints in that section.")
    flags.DEFINE_integer(
        "precision_rounds",
        3,
        "Rounds of the precisions section (every precision at batch 128 and "
        "512: distmnist, tuned Keras under the matching policy, JAX), then the time to the accuracy "
        "target in each mixed precision; 0 skips it.",
    )
    flags.DEFINE_integer(
        "process_rounds",
        3,
        "Rounds of the whole-process section (distmnist.train at its defaults, "
        "a Keras fit script, a bare TensorFlow import, each a fresh process); 0 skips it.",
    )
    flags.DEFINE_boolean(
        "results",
        True,
        "Write the figures to bench/results/<kind of machine>.md, replacing that "
        "file (--quick never does; --noresults for a run that should not).",
    )


TARGET_ACCURACY = 0.98


def replica_setups(num_gpus: int, gpu_name: str = "GPU"):
    """(replicas, device label, strategy factory) for each configuration to measure."""
    from distmnist.training.strategy import make_strategy

    if num_gpus:
        return [(n, gpu_name, lambda n=n: make_strategy(num_gpus=n).strategy) for n in range(1, num_gpus + 1)]
    return [
        (1, "CPU", lambda: make_strategy(num_gpus=0).strategy),
        (2, "2 logical CPUs", lambda: make_strategy(cpu_replicas=2).strategy),
    ]


def run_bench() -> dict:
    # Settings checked before TensorFlow is imported, as the train entry point does: bad flags fail at once.
    if (
        FLAGS.batch_size <= 0
        or FLAGS.steps <= 0
        or FLAGS.rounds <= 0
        or FLAGS.turns <= 0
        or FLAGS.warmup_steps < 0
        or FLAGS.process_rounds < 0
        or FLAGS.checkpoint_rounds < 0
        or FLAGS.checkpoint_every <= 0
        or FLAGS.breakdown_rounds < 0
        or FLAGS.precision_rounds < 0
        or FLAGS.race_rounds <= 0
    ):
        raise UserError(
            "--batch_size, --steps, --rounds, --turns, --race_rounds and --checkpoint_every must be "
            "positive, --warmup_steps, --checkpoint_rounds, --process_rounds, --breakdown_rounds and "
            "--precision_rounds >= 0"
        )
    started, code = report_lib.now(), report_lib.provenance()  # the code measured: as it was when the run began
    tf = tfquiet.import_tensorflow()
    from bench import mnist_npz
    from bench.timing import Timing
    from distmnist.data import dataset
    from distmnist.training.strategy import make_strategy

    os.makedirs(FLAGS.out, exist_ok=True)
    num_gpus = len(tf.config.get_visible_devices("GPU"))
    if not num_gpus:
        make_strategy(cpu_replicas=2)  # split the CPU before any op runs
    quick = FLAGS.quick
    timing = Timing(
        per_replica_batch_size=FLAGS.batch_size,
        warmup_steps=5 if quick else FLAGS.warmup_steps,
        timed_steps=50 if quick else FLAGS.steps,
    )
    mnist = dataset.load(FLAGS.data_dir)
    installed = {name: importlib.util.find_spec(name) is not None for name in ("jax", "torch")}
    own_dir = tempfile.mkdtemp(prefix="distmnist-bench-") if any(installed.values()) else None
    try:
        npz = None
        if own_dir:
            npz = mnist_npz.write(mnist, own_dir)  # the solo processes read the same arrays, whatever the source
        report = measure(tf, mnist, num_gpus, timing, quick, npz, installed)
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    report["run"] = report_lib.run_record(code, started, report_lib.now())
    json_path = os.path.join(FLAGS.out, "bench.json")
    files.write_json(json_path, report)
    svg_path = os.path.join(FLAGS.out, "bench.svg")
    plot(report, svg_path)
    print(table(report))
    written = [json_path, svg_path]
    if FLAGS.results and not quick:  # a smoke run's figures are no machine's figures
        written.append(report_lib.write(report))
    print(f"wrote {', '.join(written)}")
    return report


def measure(tf, mnist, num_gpus: int, timing, quick: bool, npz, installed: dict) -> dict:
    """Every section in turn; what bench.json holds. npz: MNIST for the processes of their own; installed: which
    of JAX and PyTorch are."""
    jax_npz = npz if installed["jax"] else None
    from bench import breakdown, checkpointcost, lineup, precisions, race, turns
    from bench.contenders import pytorch_eager
    from distmnist.runs.runsetup import trainer_settings

    first_device = "/gpu:0" if num_gpus else "/cpu:0"
    this_machine = machine.describe(tf)
    device_name = this_machine["gpus"][0] if num_gpus else "CPU"  # every row names its device
    setups = replica_setups(num_gpus, device_name)
    setups = setups[:1] if quick else setups  # --quick: one replica count
    # --quick: one round of each section (two turns, two checkpoint rounds), a race of one epoch.
    counts = (
        {
            "rounds": 1,
            "turns": 2,
            "breakdown_rounds": 1,
            "race_rounds": 1,
            "precision_rounds": min(1, FLAGS.precision_rounds),
            "checkpoint_rounds": min(2, FLAGS.checkpoint_rounds),
            "process_rounds": min(1, FLAGS.process_rounds),
            "max_epochs": 1,
        }
        if quick
        else {
            name: FLAGS[name].value
            for name in (
                "rounds",
                "turns",
                "breakdown_rounds",
                "race_rounds",
                "precision_rounds",
                "checkpoint_rounds",
                "process_rounds",
                "max_epochs",
            )
        }
    )
    rounds, max_epochs, race_rounds = counts["rounds"], counts["max_epochs"], counts["race_rounds"]
    platform = "gpu" if num_gpus else "cpu"
    results = lineup.measure(mnist, setups, device_name, first_device, timing, rounds, quick)["results"]
    jax = turns.measure(jax_npz, setups, platform, timing, counts["turns"])
    results += jax.pop("results", [])
    # The contenders in processes of their own that cannot run here, and why: said once each, then left out.
    absent = {"jax": jax["skipped"]} if "skipped" in jax else {}
    if not installed["torch"]:
        absent["torch"] = pytorch_eager.NOT_INSTALLED
    elif num_gpus:
        absent["torch"] = "the PyTorch contender runs on CPUs only"
    report = {
        "machine": this_machine,
        "settings": dict(dataclasses.asdict(timing), **counts, quick=quick),
        "results": results,
        "ratios": lineup.ratios(results, None if "skipped" in jax else jax["by_replicas"]["1"]["median"]),
        "distmnist_over_jax": jax,
        "step_breakdown": breakdown.measure(
            jax_npz, num_gpus, timing, counts["breakdown_rounds"], two_replicas=not quick
        ),
        "time_to_accuracy": race.measure(
            mnist,
            setups[0][2],
            0.90 if quick else TARGET_ACCURACY,
            max_epochs,
            trainer_settings(
                TrainConfig(batch_size=FLAGS.batch_size), max_epochs * (len(mnist.x_train) // FLAGS.batch_size)
            ),
            npz,
            platform,
            absent,
            race_rounds,
        ),
    }
    precision_rounds = counts["precision_rounds"]
    if precision_rounds:
        report["precisions"] = precisions.measure(
            mnist,
            setups[0][2],
            timing,
            precision_rounds,
            npz,
            platform,
            absent,
            xla_setting(tf, num_gpus),
            report["time_to_accuracy"]["target"],
            max_epochs,
            trainer_settings(
                TrainConfig(batch_size=FLAGS.batch_size), max_epochs * (len(mnist.x_train) // FLAGS.batch_size)
            ),
            precision_support(tf, num_gpus).native,
            race_rounds,
        )
    checkpoint_rounds = counts["checkpoint_rounds"]
    if checkpoint_rounds:
        gc.collect()
        every = 10 if quick else FLAGS.checkpoint_every
        print(f"checkpoints: {checkpoint_rounds} paired round(s) of {every} steps with and without a save", flush=True)
        report["checkpoints"] = checkpointcost.measure(mnist, setups[0][2](), every, checkpoint_rounds)
    process_rounds = counts["process_rounds"]
    if process_rounds:
        print(f"whole process: {process_rounds} round(s) of three fresh processes, in turn", flush=True)
        report["whole_process"] = wholeprocess.measure(process_rounds, FLAGS.data_dir, quick)
    return report


def precision_support(tf, num_gpus: int):
    """What this machine's first device does with each precision."""
    from distmnist.training import devices

    return devices.support_of(tf.config.get_visible_devices("GPU")[:1] if num_gpus else [])


def xla_setting(tf, num_gpus: int):
    """precision -> distmnist's XLA setting for it on this machine's first device, as a run resolves it."""
    from distmnist.training import devices

    support = precision_support(tf, num_gpus)
    return lambda precision: devices.resolve_xla(None, TrainConfig.input, precision, support)


def table(report: dict) -> str:
    """Every section's table, under the machine's line."""
    from bench import breakdown, checkpointcost, lineup, precisions, race, turns

    m = report["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, GPUs: {', '.join(m['gpus']) or 'none'}, "
        f"TensorFlow {m['tf_version']}",
        lineup.table(report["results"], report["ratios"]),
        turns.table(report["distmnist_over_jax"]),
        breakdown.table(report["step_breakdown"]),
        race.table(report["time_to_accuracy"]),
    ]
    if "precisions" in report:
        lines.append(precisions.table(report["precisions"]))
    if "checkpoints" in report:
        lines.append(checkpointcost.table(report["checkpoints"]))
    if "whole_process" in report:
        lines.append(wholeprocess.table(report["whole_process"]))
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """A horizontal bar per contender, distmnist's default in red, the compute bound in grey."""
    from distmnist.runs import plots

    plt = plots.plt
    rows = report["results"]
    labels = [f"{r['name']} ({r['replicas']}x {r['device']})" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    colors = [
        "tab:red" if "distmnist (default)" in label else "tab:gray" if "bound" in label else "tab:blue"
        for label in labels
    ]
    ax.barh(range(len(rows)), [r["examples_per_sec"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("examples/second (higher is better)")
    m = report["machine"]
    ax.set_title(f"{m['cpu']} ({m['cores']} cores), TF {m['tf_version']}", fontsize=9)
    fig.tight_layout()  # labels that vary with the results
    plots.save_svg(fig, path)


if __name__ == "__main__":
    cli.run(run_bench, prog="bench", define_flags=define_flags)

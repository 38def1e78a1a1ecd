"""Benchmark: distmnist against the other ways of training this MLP in TensorFlow, on this machine, now.

  python -m distmnist.bench            # about 15 minutes on a 2-core CPU; writes bench.json and bench.svg
  python -m distmnist.bench --quick    # a smoke test: one round of a few steps each, one replica count

Contenders, each at the same per-replica batch after a warm-up: the tutorial's eager loop, Keras Model.fit
(default and tuned), distmnist --input=tfdata, distmnist's default, and where JAX is installed (the `bench`
extra) JAX's compiled scan against distmnist's default, each in a fresh process of its own (solo.py), and the
compute bound (a large matmul's FLOP/s over 2.41 MFLOP per example); for 1 and 2 CPU replicas, or 1..N GPUs.
All of them are timed in turn, --rounds times, and each one's best round counts. Where JAX is installed, on a
CPU, the step breakdown: where one replica's step goes in each of those two, kernel by kernel in XLA's
executable or outside it (xlaprofile.py). Then time to 98% test accuracy. Then what checkpoints cost the
training (checkpointcost.py). Then the whole process (wholeprocess.py): `python -m distmnist.train` at its
defaults against a Keras fit script doing the same training, and a bare `import tensorflow`, each a fresh
process timed from outside, --process_rounds times.
"""

import dataclasses
import gc
import importlib.util
import os
import platform
import shutil
import statistics
import tempfile

from absl import flags

from distmnist import cli, progress, tfquiet
from distmnist.bench import wholeprocess
from distmnist.config import TrainConfig
from distmnist.errors import UserError

flags.DEFINE_string("out", ".", "Folder for bench.json and bench.svg.")
flags.DEFINE_boolean("quick", False, "A short smoke run: few steps, one replica count, accuracy target 90% "
                     "within one epoch, one whole-process round of short runs.")
flags.DEFINE_integer("batch_size", 128, "Per-replica batch size for every contender.")
flags.DEFINE_integer("steps", 400, "Timed steps per contender.")
flags.DEFINE_integer("warmup_steps", 50, "Untimed steps first (tracing, compiling, caches).")
flags.DEFINE_integer("rounds", 3, "Times each contender is measured, all contenders in turn; the best counts.")
flags.DEFINE_integer("turns", 16, "Turns that distmnist's default and JAX's scan take, each in a process of its "
                     "own, for each replica count (where JAX is installed); the median paired ratio counts.")
flags.DEFINE_integer("breakdown_rounds", 3, "Rounds of the step breakdown: one CPU replica of distmnist's default "
                     "and of JAX's scan, each profiled in a process of its own with XLA's kernel events, alternating "
                     "(where JAX is installed and there is no GPU); 0 skips it.")
flags.DEFINE_integer("max_epochs", 15, "Give up the time-to-accuracy race after this many epochs.")
flags.DEFINE_string("data_dir", None, "As for distmnist.train.")
flags.DEFINE_integer("checkpoint_rounds", 30, "Paired rounds of the checkpoint section (training with and "
                     "without a checkpoint every --checkpoint_every steps); 0 skips it.")
flags.DEFINE_integer("checkpoint_every", TrainConfig.checkpoint_every, "Steps between checkpoints in that section.")
flags.DEFINE_integer("process_rounds", 3, "Rounds of the whole-process section (distmnist.train at its defaults, "
                     "a Keras fit script, a bare TensorFlow import, each a fresh process); 0 skips it.")

FLAGS = flags.FLAGS
TARGET_ACCURACY = 0.98


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(tf) -> dict:
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.get_visible_devices("GPU")]
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpus": gpus, "tf_version": tf.__version__}


def replica_setups(num_gpus: int, gpu_name: str = "GPU"):
    """(replicas, device label, strategy factory) for each configuration to measure."""
    from distmnist.strategy import make_strategy

    if num_gpus:
        return [(n, gpu_name, lambda n=n: make_strategy(num_gpus=n).strategy) for n in range(1, num_gpus + 1)]
    return [(1, "CPU", lambda: make_strategy(num_gpus=0).strategy),
            (2, "2 logical CPUs", lambda: make_strategy(cpu_replicas=2).strategy)]


JAX_NAME = "jax scan"
SOLO_NAME = "distmnist (default, own process)"  # what JAX is compared with: both timed the same way


def run_bench() -> dict:
    # Settings checked before TensorFlow is imported, as the train entry point does: bad flags fail at once.
    if FLAGS.batch_size <= 0 or FLAGS.steps <= 0 or FLAGS.rounds <= 0 or FLAGS.turns <= 0 or FLAGS.warmup_steps < 0 \
            or FLAGS.process_rounds < 0 or FLAGS.checkpoint_rounds < 0 or FLAGS.checkpoint_every <= 0 \
            or FLAGS.breakdown_rounds < 0:
        raise UserError("--batch_size, --steps, --rounds, --turns and --checkpoint_every must be positive, "
                        "--warmup_steps, --checkpoint_rounds, --process_rounds and --breakdown_rounds >= 0")
    config = TrainConfig(batch_size=FLAGS.batch_size)  # the time-to-accuracy race's settings
    tf = tfquiet.import_tensorflow()
    from distmnist import data
    from distmnist.bench import contenders
    from distmnist.strategy import make_strategy

    os.makedirs(FLAGS.out, exist_ok=True)
    num_gpus = len(tf.config.get_visible_devices("GPU"))
    if not num_gpus:
        make_strategy(cpu_replicas=2)  # split the CPU before any op runs
    quick = FLAGS.quick
    timing = contenders.Timing(per_replica_batch_size=FLAGS.batch_size,
                               warmup_steps=5 if quick else FLAGS.warmup_steps,
                               timed_steps=50 if quick else FLAGS.steps)
    rounds = 1 if quick else FLAGS.rounds
    mnist = data.load(FLAGS.data_dir)
    jax_dir = None if importlib.util.find_spec("jax") is None else tempfile.mkdtemp(prefix="distmnist-bench-")
    try:
        return _measure_all(tf, mnist, num_gpus, timing, rounds, config, quick, jax_dir)
    finally:
        if jax_dir:
            shutil.rmtree(jax_dir, ignore_errors=True)


def _measure_all(tf, mnist, num_gpus: int, timing, rounds: int, config: TrainConfig, quick: bool,
                 jax_dir) -> dict:
    import numpy as np

    from distmnist import files
    from distmnist.bench import checkpointcost, contenders

    if jax_dir:
        npz = os.path.join(jax_dir, "mnist.npz")  # the solo processes read the same arrays, whatever the source
        np.savez(npz, **mnist.arrays())
    else:
        print(f"{JAX_NAME}: skipped, {contenders.solo.NOT_INSTALLED}", flush=True)
    first_device = "/gpu:0" if num_gpus else "/cpu:0"
    device_name = machine(tf)["gpus"][0] if num_gpus else "CPU"  # every row names its device
    bound_sizes = {"sizes": (1024,), "min_seconds": 0.1} if quick else {}
    lineup = [("compute bound", 1, device_name,
               lambda: contenders.matmul_flops_per_sec(first_device, **bound_sizes) / contenders.FLOP_PER_EXAMPLE),
              ("tutorial eager", 1, device_name, lambda: contenders.tutorial_eager(mnist, first_device, timing))]
    setups = replica_setups(num_gpus, device_name)
    for replicas, device, strategy_fn in setups[:1] if quick else setups:  # --quick: one replica count
        lineup += [
            ("keras fit (default)", replicas, device,
             lambda s=strategy_fn: contenders.keras_fit(mnist, s(), timing, tuned=False)),
            ("keras fit (tuned)", replicas, device,
             lambda s=strategy_fn: contenders.keras_fit(mnist, s(), timing, tuned=True)),
            ("distmnist --input=tfdata", replicas, device,
             lambda s=strategy_fn: contenders.distmnist_trainer(mnist, s(), timing, "tfdata")),
            ("distmnist (default)", replicas, device,
             lambda s=strategy_fn: contenders.distmnist_trainer(mnist, s(), timing, "device")),
        ]
    results = [{"name": name, "replicas": replicas, "device": device,
                "per_replica_batch_size": timing.per_replica_batch_size, "rounds": []}
               for name, replicas, device, _ in lineup]

    print(f"{rounds} round(s), each contender set up afresh, warmed up for {timing.warmup_steps} steps and timed "
          f"for {timing.timed_steps} at batch {timing.per_replica_batch_size} per replica; the best round counts",
          flush=True)
    # Rounds rather than back-to-back repeats: shared machines drift over minutes, and a contender
    # timed only in a slow spell would skew every ratio. Each measurement builds its contender anew and
    # gc.collect() first ends the tf.data iterators the one before left prefetching on their own threads.
    bar = progress.Bar(rounds * len(lineup), "measuring")
    for round_number in range(1, rounds + 1):
        for (name, replicas, device, measure), row in zip(lineup, results):
            gc.collect()
            row["rounds"].append(measure())
            bar.say(f"  round {round_number}: {name:<34} {replicas} x {device:<16} "
                    f"{row['rounds'][-1]:>12,.0f} examples/s")
            bar.update(sum(len(r["rounds"]) for r in results))
    bar.close()
    for row in results:
        row["examples_per_sec"] = max(row["rounds"])
    jax_section = {"skipped": contenders.solo.NOT_INSTALLED}
    if jax_dir:
        turns = 2 if quick else FLAGS.turns
        jax_section = {"turns": turns, "by_replicas": {}}
        print(f"{SOLO_NAME} and {JAX_NAME}: two processes taking {turns} turns of {timing.timed_steps} steps",
              flush=True)
        for replicas, device, _ in setups[:1] if quick else setups:
            turns_made = contenders.take_turns(npz, replicas, "gpu" if num_gpus else "cpu", timing, turns)
            if "skipped" in turns_made:  # JAX without a backend for these devices: one line, the rest goes on
                jax_section = {"skipped": turns_made["skipped"]}
                print(f"  {JAX_NAME}: skipped, {turns_made['skipped']}", flush=True)
                break
            for name, contender in ((SOLO_NAME, "distmnist"), (JAX_NAME, "jax")):
                results.append({"name": name, "replicas": replicas, "device": device,
                                "per_replica_batch_size": timing.per_replica_batch_size,
                                "rounds": turns_made[contender],
                                "examples_per_sec": statistics.median(turns_made[contender])})
            ratios_made = turns_made["ratios"]
            quartiles = statistics.quantiles(ratios_made, n=4) if len(ratios_made) > 1 else ratios_made * 3
            jax_section["by_replicas"][str(replicas)] = {
                "median": statistics.median(ratios_made), "quartiles": [quartiles[0], quartiles[2]],
                "ratios": ratios_made}
            print(f"  {replicas} x {device}: distmnist / jax median {statistics.median(ratios_made):.3f} "
                  f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})", flush=True)

    breakdown = _step_breakdown(npz if jax_dir else None, num_gpus, timing, 1 if quick else FLAGS.breakdown_rounds)

    def rate(name, replicas=1):
        return next(r["examples_per_sec"] for r in results if r["name"] == name and r["replicas"] == replicas)

    ours = rate("distmnist (default)")
    ratios = {
        "vs_keras_default": ours / rate("keras fit (default)"),
        "vs_keras_tuned": ours / rate("keras fit (tuned)"),
        "vs_tutorial_eager": ours / rate("tutorial eager"),
        "of_compute_bound": ours / rate("compute bound"),
    }
    if jax_dir:
        ratios["vs_jax_scan"] = jax_section["by_replicas"]["1"]["median"]
    target = 0.90 if quick else TARGET_ACCURACY
    max_epochs = 1 if quick else FLAGS.max_epochs
    race = {}
    for name, fn in (("distmnist (default)", contenders.time_to_accuracy_distmnist),
                     ("keras fit (tuned)", contenders.time_to_accuracy_keras)):
        gc.collect()
        seconds, epochs, accuracy = fn(mnist, replica_setups(num_gpus, device_name)[0][2](), target, max_epochs,
                                       config)
        race[name] = {"seconds": seconds, "epochs": epochs, "accuracy": accuracy}
        print(f"  time to {target:.1%}: {name:<22} "
              + (f"{seconds:6.1f} s ({epochs} epochs, {accuracy:.2%})" if seconds else
                 f"not reached in {epochs} epochs ({accuracy:.2%})"), flush=True)

    report = {
        "machine": machine(tf),
        "settings": dict(dataclasses.asdict(timing), rounds=rounds, quick=quick),
        "results": results,
        "ratios": ratios,
        "distmnist_over_jax": jax_section,
        "step_breakdown": breakdown,
        "time_to_accuracy": {"target": target, "learning_rate": config.learning_rate, "by": race},
    }
    checkpoint_rounds = min(2, FLAGS.checkpoint_rounds) if quick else FLAGS.checkpoint_rounds
    if checkpoint_rounds:
        gc.collect()
        every = 10 if quick else FLAGS.checkpoint_every
        print(f"checkpoints: {checkpoint_rounds} paired round(s) of {every} steps with and without a save", flush=True)
        report["checkpoints"] = checkpointcost.measure(mnist, replica_setups(num_gpus, device_name)[0][2](), every,
                                                       checkpoint_rounds)
    process_rounds = min(1, FLAGS.process_rounds) if quick else FLAGS.process_rounds
    if process_rounds:
        print(f"whole process: {process_rounds} round(s) of three fresh processes, in turn", flush=True)
        report["whole_process"] = wholeprocess.measure(process_rounds, FLAGS.data_dir, quick)
    json_path = os.path.join(FLAGS.out, "bench.json")
    files.write_json(json_path, report)
    svg_path = os.path.join(FLAGS.out, "bench.svg")
    plot(report, svg_path)
    print(table(report))
    print(f"wrote {json_path} and {svg_path}")
    return report


def _step_breakdown(npz, num_gpus: int, timing, rounds: int) -> dict:
    """bench.json's step_breakdown: every round's figures for each contender and its median round (by wall time),
    or why the section was skipped."""
    from distmnist.bench import contenders

    if not rounds:
        return {"skipped": "--breakdown_rounds=0"}
    if num_gpus:
        return {"skipped": "XLA's kernel events are read on CPUs only"}
    if npz is None:
        return {"skipped": contenders.solo.NOT_INSTALLED}
    print(f"step breakdown: {rounds} round(s) of {timing.timed_steps} profiled steps on one CPU replica, "
          "distmnist and JAX alternating", flush=True)
    made = contenders.step_breakdown(npz, timing, rounds)
    if "skipped" in made:
        return made
    median = {name: sorted(runs, key=lambda r: r["wall_us"])[(len(runs) - 1) // 2] for name, runs in made.items()}
    return {"rounds": made, "median": median}


def breakdown_table(section: dict) -> str:
    if "skipped" in section:
        return f"step breakdown: skipped, {section['skipped']}"
    lines = ["step breakdown, one CPU replica, us a step (median round): wall = in XLA's executable + outside it; "
             "the largest kernels' shares"]
    for name, b in section["median"].items():
        lines.append(f"  {name:<10} wall {b['wall_us']:6.0f} = in XLA {b['in_xla_us']:6.0f} + outside "
                     f"{b['outside_us']:4.0f}; " + ", ".join(f"{kernel} {us:.0f}" for kernel, us in b["top"][:5]))
    return "\n".join(lines)


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, GPUs: {', '.join(m['gpus']) or 'none'}, "
             f"TensorFlow {m['tf_version']}", f"{'contender':<34} {'replicas':>8} {'examples/s':>12}"]
    for r in report["results"]:
        lines.append(f"{r['name']:<34} {r['replicas']:>8} {r['examples_per_sec']:>12,.0f}")
    lines.append("distmnist default, one replica: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))
    jax = report["distmnist_over_jax"]
    lines.append("distmnist default / jax scan, each in its own process, paired turns: " + (
        f"skipped, {jax['skipped']}" if "skipped" in jax else ", ".join(
            f"{replicas} replica(s) median {by['median']:.3f} (quartiles {by['quartiles'][0]:.3f}-"
            f"{by['quartiles'][1]:.3f})" for replicas, by in jax["by_replicas"].items())))
    lines.append(breakdown_table(report["step_breakdown"]))
    if "checkpoints" in report:
        from distmnist.bench import checkpointcost

        lines.append(checkpointcost.table(report["checkpoints"]))
    if "whole_process" in report:
        lines.append(wholeprocess.table(report["whole_process"]))
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """A horizontal bar per contender, distmnist's default in red, the compute bound in grey."""
    from distmnist import plots

    plt = plots.plt
    rows = report["results"]
    labels = [f"{r['name']} ({r['replicas']}x {r['device']})" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    colors = ["tab:red" if "distmnist (default)" in label else "tab:gray" if "bound" in label else "tab:blue"
              for label in labels]
    ax.barh(range(len(rows)), [r["examples_per_sec"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("examples/second (higher is better)")
    m = report["machine"]
    ax.set_title(f"{m['cpu']} ({m['cores']} cores), TF {m['tf_version']}", fontsize=9)
    fig.tight_layout()  # labels that vary with the results
    plots.save_svg(fig, path)


if __name__ == "__main__":
    cli.run(run_bench, prog="distmnist.bench")

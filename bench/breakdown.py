"""Where a CPU step goes in distmnist's default and in JAX's scan, on one replica and on two (logical CPUs, as the
bench's lineup and turns run them): each profiled in a process of its own with XLA's kernel events (xlaprofile.py),
inside XLA's executables kernel by kernel, or outside them, and on two replicas the all-reduce between them.

On two replicas the two do not run the same way. JAX's scan is one XLA program for both devices (its SPMD
partitioner puts the all-reduce in it), run once for all the steps. distmnist's call is TensorFlow's graph: a
while loop whose body runs, for each replica, two XLA launches (its batch and gradients; its update) with
TensorFlow's ReductionToOneDevice between them (the sums on the first logical CPU, read by the second), the
executor scheduling each of them every step."""

import tempfile

from bench import ownprocess, xlaprofile
from bench.contenders import jax_scan
from bench.timing import Timing


def profiled_rounds(npz: str, timing: Timing, rounds: int, replicas: int = 1) -> dict:
    """Where the steps go on `replicas` CPU replicas, for distmnist's default trainer and JAX's scan, each in a
    process of its own (solo.py --profile) with XLA's kernel events on, the two alternating for `rounds` rounds:
    {"distmnist": [xlaprofile.breakdown per round], "jax": [...]}, or {"skipped": why} without JAX.

    RunFailed with the last line a contender wrote to stderr when one fails."""
    made = {"distmnist": [], "jax": []}
    for round_number in range(rounds):
        for name in ("distmnist", "jax") if round_number % 2 == 0 else ("jax", "distmnist"):
            with tempfile.TemporaryDirectory(prefix="distmnist-profile-") as logdir:
                reply = ownprocess.run(
                    name,
                    npz,
                    kernels=True,
                    batch_size=timing.per_replica_batch_size,
                    steps=timing.timed_steps,
                    learning_rate=timing.learning_rate,
                    seed=timing.seed,
                    profile=logdir,
                    replicas=replicas,
                )
                if "skipped" in reply:
                    return reply
                with open(reply["trace"], "rb") as trace:
                    made[name].append(xlaprofile.breakdown(trace.read(), reply["steps"], reply["seconds"]))
    return made


def _medians(made: dict) -> dict:
    return {name: sorted(runs, key=lambda r: r["wall_us"])[(len(runs) - 1) // 2] for name, runs in made.items()}


def measure(npz, num_gpus: int, timing, rounds: int, two_replicas: bool = True) -> dict:
    """Every round's figures for each contender and its median round (by wall time), on one replica ("rounds",
    "median") and, with two_replicas, on two ("two_replicas": {"rounds", "median"}); or why it was skipped."""
    if not rounds:
        return {"skipped": "--breakdown_rounds=0"}
    if num_gpus:
        return {"skipped": "XLA's kernel events are read on CPUs only"}
    if npz is None:
        return {"skipped": jax_scan.NOT_INSTALLED}
    print(
        f"step breakdown: {rounds} round(s) of {timing.timed_steps} profiled steps on one CPU replica"
        f"{' and on two' if two_replicas else ''}, distmnist and JAX alternating",
        flush=True,
    )
    made = profiled_rounds(npz, timing, rounds)
    if "skipped" in made:
        return made
    section = {"rounds": made, "median": _medians(made)}
    if two_replicas:
        two = profiled_rounds(npz, timing, rounds, replicas=2)
        section["two_replicas"] = {"rounds": two, "median": _medians(two)}
    return section


def table(section: dict) -> str:
    if "skipped" in section:
        return f"step breakdown: skipped, {section['skipped']}"
    lines = [
        "step breakdown, one CPU replica, us a step (median round): wall = in XLA's executable + outside it; "
        "the largest kernels' shares"
    ]
    lines += _lines(section["median"])
    if "two_replicas" in section:
        lines.append(
            "step breakdown, two CPU replicas, us a step (median round): wall = in XLA's executables + "
            "outside them; the all-reduce (JAX's within XLA, distmnist's outside)"
        )
        lines += _lines(section["two_replicas"]["median"], all_reduce=True)
    return "\n".join(lines)


def _lines(median: dict, all_reduce: bool = False) -> list:
    return [
        f"  {name:<10} wall {b['wall_us']:6.0f} = in XLA {b['in_xla_us']:6.0f} + outside {b['outside_us']:4.0f}"
        + (f"; all-reduce {b['all_reduce_us']:5.0f}" if all_reduce else "")
        + "; "
        + ", ".join(f"{kernel} {us:.0f}" for kernel, us in b["top"][:5])
        for name, b in median.items()
    ]

"""Where one CPU replica's step goes in distmnist's default and in JAX's scan: each profiled in a process of its
own with XLA's kernel events (xlaprofile.py), inside XLA's executable kernel by kernel, or outside it."""

import tempfile

from bench import ownprocess, xlaprofile
from bench.contenders import jax_scan
from bench.timing import Timing


def profiled_rounds(npz: str, timing: Timing, rounds: int) -> dict:
    """Where one CPU replica's steps go, for distmnist's default trainer and JAX's scan, each in a process of its
    own (solo.py --profile) with XLA's kernel events on, the two alternating for `rounds` rounds: {"distmnist":
    [xlaprofile.breakdown per round], "jax": [...]}, or {"skipped": why} without JAX.

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
                )
                if "skipped" in reply:
                    return reply
                with open(reply["trace"], "rb") as trace:
                    made[name].append(xlaprofile.breakdown(trace.read(), reply["steps"], reply["seconds"]))
    return made


def measure(npz, num_gpus: int, timing, rounds: int) -> dict:
    """Every round's figures for each contender and its median round (by wall time), or why it was skipped."""
    if not rounds:
        return {"skipped": "--breakdown_rounds=0"}
    if num_gpus:
        return {"skipped": "XLA's kernel events are read on CPUs only"}
    if npz is None:
        return {"skipped": jax_scan.NOT_INSTALLED}
    print(
        f"step breakdown: {rounds} round(s) of {timing.timed_steps} profiled steps on one CPU replica, "
        "distmnist and JAX alternating",
        flush=True,
    )
    made = profiled_rounds(npz, timing, rounds)
    if "skipped" in made:
        return made
    median = {name: sorted(runs, key=lambda r: r["wall_us"])[(len(runs) - 1) // 2] for name, runs in made.items()}
    return {"rounds": made, "median": median}


def table(section: dict) -> str:
    if "skipped" in section:
        return f"step breakdown: skipped, {section['skipped']}"
    lines = [
        "step breakdown, one CPU replica, us a step (median round): wall = in XLA's executable + outside it; "
        "the largest kernels' shares"
    ]
    for name, b in section["median"].items():
        lines.append(
            f"  {name:<10} wall {b['wall_us']:6.0f} = in XLA {b['in_xla_us']:6.0f} + outside "
            f"{b['outside_us']:4.0f}; " + ", ".join(f"{kernel} {us:.0f}" for kernel, us in b["top"][:5])
        )
    return "\n".join(lines)

"""distmnist's default and JAX's compiled scan, each in a process of its own that stays up, taking paired turns
(take_turns, solo.py --serve): the median of the per-turn ratios, for each replica count."""

import statistics
import subprocess
import tempfile

from bench import ownprocess
from bench.contenders import jax_scan
from bench.timing import Timing

JAX_NAME = "jax scan"
SOLO_NAME = "distmnist (default, own process)"  # what JAX is compared with: both timed the same way


def take_turns(npz: str, replicas: int, platform: str, timing: Timing, turns: int) -> dict:
    """distmnist's default trainer and JAX's scan, each in a process of its own that stays up, warmed up by one
    untimed run, then taking turns: each turn runs timing.timed_steps steps in one, then in the other (the order
    alternating), while the other waits. Returns {"distmnist": [examples/s per turn], "jax": [...], "ratios":
    [distmnist / jax per turn]}, or {"skipped": why} without JAX. Paired turns a few seconds apart see the same
    machine, where shared machines drift over minutes.

    RunFailed with the last line a contender wrote to stderr when one fails."""
    names = ("distmnist", "jax")
    processes = {}
    try:
        for name in names:
            errors = tempfile.TemporaryFile(mode="w+")
            process = ownprocess.start(
                name,
                npz,
                replicas,
                platform,
                errors,
                batch_size=timing.per_replica_batch_size,
                steps=timing.timed_steps,
                learning_rate=timing.learning_rate,
                seed=timing.seed,
                serve=turns,
            )
            processes[name] = (process, errors)
            ready = ownprocess.reply(name, process, errors)
            if "skipped" in ready:
                return ready
        rates = {name: [] for name in names}
        for turn in range(turns):
            for name in names if turn % 2 == 0 else names[::-1]:
                process, errors = processes[name]
                process.stdin.write("go\n")
                process.stdin.flush()
                rates[name].append(ownprocess.reply(name, process, errors)["examples_per_sec"])
        return dict(rates, ratios=[d / j for d, j in zip(rates["distmnist"], rates["jax"], strict=True)])
    finally:
        for process, errors in processes.values():
            process.stdin.close()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
            errors.close()


def measure(npz, setups, platform: str, timing: Timing, turns: int) -> dict:
    """{"turns", "by_replicas": {replicas: {"median", "quartiles", "ratios"}}, "results": [rows for the table]}, or
    {"skipped": why} (no JAX, or a JAX without a backend for these devices)."""
    if npz is None:
        print(f"{JAX_NAME}: skipped, {jax_scan.NOT_INSTALLED}", flush=True)
        return {"skipped": jax_scan.NOT_INSTALLED}
    section = {"turns": turns, "by_replicas": {}, "results": []}
    print(f"{SOLO_NAME} and {JAX_NAME}: two processes taking {turns} turns of {timing.timed_steps} steps", flush=True)
    for replicas, device, _ in setups:
        made = take_turns(npz, replicas, platform, timing, turns)
        if "skipped" in made:  # JAX without a backend for these devices: one line, the rest goes on
            print(f"  {JAX_NAME}: skipped, {made['skipped']}", flush=True)
            return {"skipped": made["skipped"]}
        for name, contender in ((SOLO_NAME, "distmnist"), (JAX_NAME, "jax")):
            section["results"].append(
                {
                    "name": name,
                    "replicas": replicas,
                    "device": device,
                    "per_replica_batch_size": timing.per_replica_batch_size,
                    "rounds": made[contender],
                    "examples_per_sec": statistics.median(made[contender]),
                }
            )
        ratios = made["ratios"]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        section["by_replicas"][str(replicas)] = {
            "median": statistics.median(ratios),
            "quartiles": [quartiles[0], quartiles[2]],
            "ratios": ratios,
        }
        print(
            f"  {replicas} x {device}: distmnist / jax median {statistics.median(ratios):.3f} "
            f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})",
            flush=True,
        )
    return section


def table(section: dict) -> str:
    return "distmnist default / jax scan, each in its own process, paired turns: " + (
        f"skipped, {section['skipped']}"
        if "skipped" in section
        else ", ".join(
            f"{replicas} replica(s) median {by['median']:.3f} (quartiles {by['quartiles'][0]:.3f}-"
            f"{by['quartiles'][1]:.3f})"
            for replicas, by in section["by_replicas"].items()
        )
    )

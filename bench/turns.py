"""distmnist's default and JAX's compiled scan, each in a process of its own that stays up, taking paired turns
(contenders.take_turns, solo.py): the median of the per-turn ratios, for each replica count."""

import statistics

from distmnist.bench import contenders

JAX_NAME = "jax scan"
SOLO_NAME = "distmnist (default, own process)"  # what JAX is compared with: both timed the same way


def measure(npz, setups, platform: str, timing, turns: int) -> dict:
    """{"turns", "by_replicas": {replicas: {"median", "quartiles", "ratios"}}, "results": [rows for the table]}, or
    {"skipped": why} (no JAX, or a JAX without a backend for these devices)."""
    if npz is None:
        print(f"{JAX_NAME}: skipped, {contenders.solo.NOT_INSTALLED}", flush=True)
        return {"skipped": contenders.solo.NOT_INSTALLED}
    section = {"turns": turns, "by_replicas": {}, "results": []}
    print(f"{SOLO_NAME} and {JAX_NAME}: two processes taking {turns} turns of {timing.timed_steps} steps", flush=True)
    for replicas, device, _ in setups:
        made = contenders.take_turns(npz, replicas, platform, timing, turns)
        if "skipped" in made:  # JAX without a backend for these devices: one line, the rest goes on
            print(f"  {JAX_NAME}: skipped, {made['skipped']}", flush=True)
            return {"skipped": made["skipped"]}
        for name, contender in ((SOLO_NAME, "distmnist"), (JAX_NAME, "jax")):
            section["results"].append({"name": name, "replicas": replicas, "device": device,
                                       "per_replica_batch_size": timing.per_replica_batch_size,
                                       "rounds": made[contender],
                                       "examples_per_sec": statistics.median(made[contender])})
        ratios = made["ratios"]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        section["by_replicas"][str(replicas)] = {"median": statistics.median(ratios),
                                                 "quartiles": [quartiles[0], quartiles[2]], "ratios": ratios}
        print(f"  {replicas} x {device}: distmnist / jax median {statistics.median(ratios):.3f} "
              f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})", flush=True)
    return section


def table(section: dict) -> str:
    return "distmnist default / jax scan, each in its own process, paired turns: " + (
        f"skipped, {section['skipped']}" if "skipped" in section else ", ".join(
            f"{replicas} replica(s) median {by['median']:.3f} (quartiles {by['quartiles'][0]:.3f}-"
            f"{by['quartiles'][1]:.3f})" for replicas, by in section["by_replicas"].items()))

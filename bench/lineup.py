"""The bench's lineup: every way of training this MLP in TensorFlow in this process, each set up afresh, warmed up
and timed in turn, --rounds times (the best round counts), for each replica count; and the ratios of distmnist's
default to the others on one replica."""

import gc

from bench.contenders import compute_bound, distmnist_trainer, keras_fit, tutorial_eager
from distmnist.common import progress


def _lineup(mnist, setups, device_name: str, first_device: str, timing, quick: bool) -> list:
    """(name, replicas, device label, measure()) for every contender."""
    bound_sizes = {"sizes": (1024,), "min_seconds": 0.1} if quick else {}
    lineup = [
        ("compute bound", 1, device_name, lambda: compute_bound.examples_per_sec(first_device, **bound_sizes)),
        ("tutorial eager", 1, device_name, lambda: tutorial_eager.examples_per_sec(mnist, first_device, timing)),
    ]
    for replicas, device, strategy_fn in setups:
        lineup += [
            (
                "keras fit (default)",
                replicas,
                device,
                lambda s=strategy_fn: keras_fit.examples_per_sec(mnist, s(), timing, tuned=False),
            ),
            (
                "keras fit (tuned)",
                replicas,
                device,
                lambda s=strategy_fn: keras_fit.examples_per_sec(mnist, s(), timing, tuned=True),
            ),
            (
                "distmnist --input=tfdata",
                replicas,
                device,
                lambda s=strategy_fn: distmnist_trainer.examples_per_sec(mnist, s(), timing, "tfdata"),
            ),
            (
                "distmnist (default)",
                replicas,
                device,
                lambda s=strategy_fn: distmnist_trainer.examples_per_sec(mnist, s(), timing, "device"),
            ),
        ]
    return lineup


def measure(mnist, setups, device_name: str, first_device: str, timing, rounds: int, quick: bool) -> dict:
    """{"results": [one row per contender and replica count, its rounds and its best]}."""
    lineup = _lineup(mnist, setups, device_name, first_device, timing, quick)
    results = [
        {
            "name": name,
            "replicas": replicas,
            "device": device,
            "per_replica_batch_size": timing.per_replica_batch_size,
            "rounds": [],
        }
        for name, replicas, device, _ in lineup
    ]
    print(
        f"{rounds} round(s), each contender set up afresh, warmed up for {timing.warmup_steps} steps and timed "
        f"for {timing.timed_steps} at batch {timing.per_replica_batch_size} per replica; the best round counts",
        flush=True,
    )
    # Rounds rather than back-to-back repeats: shared machines drift over minutes, and a contender
    # timed only in a slow spell would skew every ratio. Each measurement builds its contender anew and
    # gc.collect() first ends the tf.data iterators the one before left prefetching on their own threads.
    bar = progress.Bar(rounds * len(lineup), "measuring")
    for round_number in range(1, rounds + 1):
        for (name, replicas, device, measure_one), row in zip(lineup, results, strict=True):
            gc.collect()
            row["rounds"].append(measure_one())
            bar.say(
                f"  round {round_number}: {name:<34} {replicas} x {device:<16} {row['rounds'][-1]:>12,.0f} examples/s"
            )
            bar.update(sum(len(r["rounds"]) for r in results))
    bar.close()
    for row in results:
        row["examples_per_sec"] = max(row["rounds"])
    return {"results": results}


def ratios(results: list, jax_ratio=None) -> dict:
    """distmnist's default over the others, one replica (over JAX: the paired turns' median, where measured)."""

    def rate(name, replicas=1):
        return next(r["examples_per_sec"] for r in results if r["name"] == name and r["replicas"] == replicas)

    ours = rate("distmnist (default)")
    made = {
        "vs_keras_default": ours / rate("keras fit (default)"),
        "vs_keras_tuned": ours / rate("keras fit (tuned)"),
        "vs_tutorial_eager": ours / rate("tutorial eager"),
        "of_compute_bound": ours / rate("compute bound"),
    }
    if jax_ratio is not None:
        made["vs_jax_scan"] = jax_ratio
    return made


def table(results: list, ratios_made: dict) -> str:
    lines = [f"{'contender':<34} {'replicas':>8} {'examples/s':>12}"]
    for r in results:
        lines.append(f"{r['name']:<34} {r['replicas']:>8} {r['examples_per_sec']:>12,.0f}")
    lines.append("distmnist default, one replica: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios_made.items()))
    return "\n".join(lines)

"""Each precision at two batch sizes per replica (128, the tutorial's, and 512), on one replica: distmnist's
trainer (XLA as a run resolves it for that precision on this machine), tuned Keras fit under the matching global
dtype policy, and JAX's compiled scan with its layers in the same type (where JAX is installed, JAX and distmnist
each in a fresh process of its own, as the turns section has them; Keras in this one, as in the lineup);
each set up afresh and timed in turn, --rounds times, the best round counting. Then the time to the target test
accuracy of distmnist and tuned Keras in each mixed precision (float32's is the race section's). Every precision
runs on any machine; where the hardware has none, it is emulated (docs/precision.md)."""

import gc

from distmnist.bench import contenders
from distmnist.common import progress
from distmnist.common.config import PRECISIONS

BATCHES = (128, 512)


def measure(mnist, strategy_fn, timing, rounds: int, npz, installed: dict, xla_for, race_target: float,
            max_epochs: int, race_settings, native: dict) -> dict:
    """{"rows": [{"name", "precision", "batch", "rounds", "examples_per_sec"}], "ratios": {batch: {precision:
    distmnist's over the fastest other contender in any precision}}, "race": {precision: {contender: ...}}}.
    xla_for(precision): distmnist's XLA setting for it on this machine. installed: which of JAX and PyTorch are
    (npz: MNIST for their processes). native: precision -> whether this machine runs it in hardware (PyTorch's
    bfloat16 autocast is timed only where it does: emulated, it runs tens of times slower, docs/precision.md)."""
    import dataclasses

    skipped = {}
    if not installed["jax"]:
        skipped["jax scan"] = contenders.solo.NOT_INSTALLED
    if not installed["torch"]:
        skipped["pytorch eager"] = contenders.solo.TORCH_NOT_INSTALLED
    elif not native["mixed_bfloat16"]:
        skipped["pytorch eager mixed_bfloat16"] = ("bfloat16 is emulated on this CPU (no amx_bf16 or avx512_bf16), "
                                                   "where PyTorch's autocast runs tens of times slower than float32")
    for name, why in skipped.items():
        print(f"precisions: {name} skipped, {why}", flush=True)
    npz = npz if any(installed.values()) else None
    lineup = []
    for batch in BATCHES:
        at = dataclasses.replace(timing, per_replica_batch_size=batch)
        for precision in PRECISIONS:
            if npz is None:  # no JAX: distmnist in this process, as the lineup's rows
                lineup.append(("distmnist", precision, batch, lambda at=at, p=precision: contenders.distmnist_trainer(
                    mnist, strategy_fn(), at, "device", p, xla_for(p))))
            else:  # beside JAX, each in a fresh process of its own, as the turns section compares them
                lineup.append(("distmnist", precision, batch, lambda at=at, p=precision: contenders.in_own_process(
                    "distmnist", npz, at, p, xla_for(p))["examples_per_sec"]))
            lineup.append(("keras fit (tuned)", precision, batch, lambda at=at, p=precision: contenders.keras_fit(
                mnist, strategy_fn(), at, tuned=True, policy=p)))
            if installed["jax"] and precision != "mixed_float16":  # JAX's CPU dots have no float16 kernels
                lineup.append(("jax scan", precision, batch, lambda at=at, p=precision: contenders.in_own_process(
                    "jax", npz, at, p)["examples_per_sec"]))
            if installed["torch"] and (precision == "float32" or precision == "mixed_bfloat16" and native[precision]):
                lineup.append(("pytorch eager", precision, batch, lambda at=at, p=precision:
                               contenders.in_own_process("torch", npz, at, p)["examples_per_sec"]))
    rows = [{"name": name, "precision": precision, "batch": batch, "rounds": []}
            for name, precision, batch, _ in lineup]
    print(f"precisions: {rounds} round(s) of {len(lineup)} contenders at batch {' and '.join(map(str, BATCHES))}",
          flush=True)
    bar = progress.Bar(rounds * len(lineup), "precisions")
    for _ in range(rounds):
        for (name, precision, batch, measure_one), row in zip(lineup, rows):
            gc.collect()
            row["rounds"].append(measure_one())
            bar.say(f"  {name:<18} {precision:<15} batch {batch:>4} {row['rounds'][-1]:>12,.0f} examples/s")
            bar.update(sum(len(r["rounds"]) for r in rows))
    bar.close()
    for row in rows:
        row["examples_per_sec"] = max(row["rounds"])
    ratios = {}
    for batch in BATCHES:
        at_batch = [r for r in rows if r["batch"] == batch]
        others = max(r["examples_per_sec"] for r in at_batch if r["name"] != "distmnist")
        ratios[str(batch)] = {r["precision"]: r["examples_per_sec"] / others for r in at_batch
                              if r["name"] == "distmnist"}
    race = {}
    for precision in PRECISIONS[1:]:
        settings = dataclasses.replace(race_settings, precision=precision, jit_compile=xla_for(precision))
        race[precision] = {}
        for name, fn in (("distmnist", contenders.time_to_accuracy_distmnist),
                         ("keras fit (tuned)", contenders.time_to_accuracy_keras)):
            gc.collect()
            seconds, epochs, accuracy = fn(mnist, strategy_fn(), race_target, max_epochs, settings)
            race[precision][name] = {"seconds": seconds, "epochs": epochs, "accuracy": accuracy}
    return {"rows": rows, "ratios": ratios, "race": race, "target": race_target, "skipped": skipped}


def table(section: dict) -> str:
    lines = [f"precisions, one replica: {'contender':<18} {'precision':<15} {'batch':>5} {'examples/s':>12}"]
    for r in section["rows"]:
        lines.append(f"  {r['name']:<18} {r['precision']:<15} {r['batch']:>5} {r['examples_per_sec']:>12,.0f}")
    for name, why in section["skipped"].items():
        lines.append(f"  {name}: skipped, {why}")
    for batch, by in section["ratios"].items():
        lines.append(f"  batch {batch}: distmnist over the fastest other contender in any precision: " + ", ".join(
            f"{p} {v:.2f}" for p, v in by.items()))
    for precision, by in section["race"].items():
        lines.append(f"  time to {section['target']:.1%} in {precision}: " + "; ".join(
            f"{name} {r['seconds']:.1f} s ({r['epochs']} epochs)" if r["seconds"] else
            f"{name} not reached in {r['epochs']} epochs" for name, r in by.items()))
    return "\n".join(lines)

"""Each precision at two batch sizes per replica (128, the tutorial's, and 512), on one replica: distmnist's
trainer (XLA as a run resolves it for that precision on this machine), tuned Keras fit under the matching global
dtype policy, JAX's compiled scan with its layers in the same type and PyTorch's eager loop (float32, and bfloat16
autocast where the CPU has it in hardware), the last two where installed (then JAX, PyTorch and distmnist each in
a fresh process of its own, as the turns section has them; Keras in this one, as in the lineup); each set up
afresh and timed in turn, --rounds times, the best round counting. Then the time to the target test accuracy of
the same contenders in each mixed precision (float32's is the race section's). Every precision runs on any
machine; where the hardware has none, it is emulated (docs/precision.md)."""

import gc
import statistics

from bench import ownprocess
from bench.contenders import distmnist_trainer, keras_fit
from bench.race import IN_OWN_PROCESS, contest, lap_times
from distmnist.common import progress
from distmnist.common.config import PRECISIONS

BATCHES = (128, 512)


def measure(
    mnist,
    strategy_fn,
    timing,
    rounds: int,
    npz,
    platform: str,
    absent: dict,
    xla_for,
    race_target: float,
    max_epochs: int,
    race_settings,
    native: dict,
    race_rounds: int = 1,
) -> dict:
    """{"rows": [{"name", "precision", "batch", "rounds", "examples_per_sec"}], "ratios": {batch: {precision:
    distmnist's over the fastest other contender in any precision}}, "over_float32": {batch: {mixed precision:
    distmnist's over its own float32, the median of the rounds' ratios}}, "best": {batch: best(...)}, "race":
    {precision: {contender: ...}}, "skipped": {contender: why}}. xla_for(precision): distmnist's XLA setting for
    it on this machine. npz: MNIST for the processes of their own (None: none of solo.py's contenders installed),
    on the platform's first device; absent: those of them that cannot run here ("jax", "torch") -> why. native:
    precision -> whether this machine runs it in hardware (PyTorch's bfloat16 autocast is timed only where it does:
    emulated, it runs tens of times slower, docs/precision.md)."""
    import dataclasses

    skipped = {name: absent[module] for name, module in IN_OWN_PROCESS.items() if module in absent}
    if "torch" not in absent and not native["mixed_bfloat16"]:
        skipped["pytorch eager mixed_bfloat16"] = (
            "bfloat16 is emulated on this CPU (no amx_bf16 or avx512_bf16), "
            "where PyTorch's autocast runs tens of times slower than float32"
        )
    for name, why in skipped.items():
        print(f"precisions: {name} skipped, {why}", flush=True)

    def entrants(precision: str) -> list:
        """Who is timed, and raced, in this precision besides distmnist and Keras."""
        names = []
        if "jax" not in absent and (precision != "mixed_float16" or platform == "gpu"):  # no float16 dots on CPUs
            names.append("jax scan")
        if "torch" not in absent and (precision == "float32" or precision == "mixed_bfloat16" and native[precision]):
            names.append("pytorch eager")
        return names

    lineup = []
    for batch in BATCHES:
        at = dataclasses.replace(timing, per_replica_batch_size=batch)
        for precision in PRECISIONS:
            if npz is None:  # neither JAX nor PyTorch: distmnist in this process, as the lineup's rows
                lineup.append(
                    (
                        "distmnist",
                        precision,
                        batch,
                        lambda at=at, p=precision: distmnist_trainer.examples_per_sec(
                            mnist, strategy_fn(), at, "device", p, xla_for(p)
                        ),
                    )
                )
            else:  # beside them, each in a fresh process of its own, as the turns section compares them
                lineup.append(
                    (
                        "distmnist",
                        precision,
                        batch,
                        lambda at=at, p=precision: ownprocess.measure("distmnist", npz, at, p, xla_for(p), platform)[
                            "examples_per_sec"
                        ],
                    )
                )
            lineup.append(
                (
                    "keras fit (tuned)",
                    precision,
                    batch,
                    lambda at=at, p=precision: keras_fit.examples_per_sec(
                        mnist, strategy_fn(), at, tuned=True, policy=p
                    ),
                )
            )
            for name in entrants(precision):
                lineup.append(
                    (
                        name,
                        precision,
                        batch,
                        lambda at=at, p=precision, m=IN_OWN_PROCESS[name]: ownprocess.measure(
                            m, npz, at, p, platform=platform
                        )["examples_per_sec"],
                    )
                )
    rows = [
        {"name": name, "precision": precision, "batch": batch, "rounds": []} for name, precision, batch, _ in lineup
    ]
    print(
        f"precisions: {rounds} round(s) of {len(lineup)} contenders at batch {' and '.join(map(str, BATCHES))}",
        flush=True,
    )
    bar = progress.Bar(rounds * len(lineup), "precisions")
    for _ in range(rounds):
        for (name, precision, batch, measure_one), row in zip(lineup, rows, strict=True):
            gc.collect()
            row["rounds"].append(measure_one())
            bar.say(f"  {name:<18} {precision:<15} batch {batch:>4} {row['rounds'][-1]:>12,.0f} examples/s")
            bar.update(sum(len(r["rounds"]) for r in rows))
    bar.close()
    for row in rows:
        row["examples_per_sec"] = max(row["rounds"])
    ratios, over_float32 = {}, {}
    for batch in BATCHES:
        at_batch = [r for r in rows if r["batch"] == batch]
        others = max(r["examples_per_sec"] for r in at_batch if r["name"] != "distmnist")
        ours = {r["precision"]: r for r in at_batch if r["name"] == "distmnist"}
        ratios[str(batch)] = {p: r["examples_per_sec"] / others for p, r in ours.items()}
        # Within a round the precisions ran minutes apart at most, not a whole bench: paired by round.
        over_float32[str(batch)] = {
            p: statistics.median(a / b for a, b in zip(r["rounds"], ours["float32"]["rounds"], strict=True))
            for p, r in ours.items()
            if p != "float32"
        }
    race = {}
    for precision in PRECISIONS[1:]:
        settings = dataclasses.replace(race_settings, precision=precision, jit_compile=xla_for(precision))
        race[precision] = contest(
            mnist,
            strategy_fn,
            race_target,
            max_epochs,
            settings,
            npz,
            platform,
            ["distmnist", "keras fit (tuned)", *entrants(precision)],
            race_rounds,
        )
    return {
        "rows": rows,
        "ratios": ratios,
        "over_float32": over_float32,
        "best": best(rows),
        "race": race,
        "target": race_target,
        "race_rounds": race_rounds,
        "skipped": skipped,
    }


def best(rows: list) -> dict:
    """{batch: {contender: {"precision", "examples_per_sec"} of its fastest precision, "ratio": distmnist's best
    over it (distmnist's own entry: 1)}}: what each contender gets at its best at that batch, distmnist's first."""
    made = {}
    for batch in sorted({r["batch"] for r in rows}):
        fastest = {}
        for r in rows:
            if r["batch"] == batch and r["examples_per_sec"] > fastest.get(r["name"], {}).get("examples_per_sec", 0):
                fastest[r["name"]] = {"precision": r["precision"], "examples_per_sec": r["examples_per_sec"]}
        ours = fastest.pop("distmnist")
        made[str(batch)] = {
            name: dict(b, ratio=ours["examples_per_sec"] / b["examples_per_sec"])
            for name, b in {"distmnist": ours, **fastest}.items()
        }
    return made


def best_lines(by_batch: dict) -> list:
    """One line a batch: distmnist's best precision over each contender's best."""
    lines = []
    for batch, by in by_batch.items():
        ours = by["distmnist"]
        lines.append(
            f"batch {batch}: distmnist's best ({ours['precision']}, {ours['examples_per_sec']:,.0f}/s) over "
            "each contender's best: "
            + ", ".join(f"{name} ({b['precision']}) {b['ratio']:.2f}x" for name, b in by.items() if name != "distmnist")
        )
    return lines


def table(section: dict) -> str:
    lines = [f"precisions, one replica: {'contender':<18} {'precision':<15} {'batch':>5} {'examples/s':>12}"]
    for r in section["rows"]:
        lines.append(f"  {r['name']:<18} {r['precision']:<15} {r['batch']:>5} {r['examples_per_sec']:>12,.0f}")
    for name, why in section["skipped"].items():
        lines.append(f"  {name}: skipped, {why}")
    for batch, by in section["ratios"].items():
        lines.append(
            f"  batch {batch}: distmnist over the fastest other contender in any precision: "
            + ", ".join(f"{p} {v:.2f}" for p, v in by.items())
        )
    lines += [f"  {line}" for line in best_lines(section["best"])]
    for batch, by in section["over_float32"].items():
        lines.append(
            f"  batch {batch}: distmnist's mixed precisions over its float32 (median of the rounds): "
            + ", ".join(f"{p} {v:.2f}" for p, v in by.items())
        )
    for precision, by in section["race"].items():
        lines.append(
            f"  time to {section['target']:.1%} in {precision} (median of {section['race_rounds']} "
            f"round(s)): " + lap_times(by)
        )
    return "\n".join(lines)

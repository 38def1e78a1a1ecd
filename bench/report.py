"""The bench's results file: bench/results/<kind>.md (machine.py names the kind), the figures of the last full run
on this kind of machine in readable tables, with when it ran, which code (the commit, and whether tracked files had
changes) and which machine. Every full run overwrites it; --quick never writes it. docs/performance.md says how
the figures are measured and how to read them."""

import datetime
import os
import subprocess

from bench import CHECKOUT
from distmnist.common import files

RESULTS_DIR = os.path.join(CHECKOUT, "bench", "results")


def provenance() -> dict:
    """{"commit", "dirty"} of the checkout the bench runs from (None, None outside a git checkout). Dirty: tracked
    files differ from the commit, the results files aside (the run before this one may have left one)."""
    git = ["git", "-C", CHECKOUT]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=60)
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def run_record(code: dict, started: datetime.datetime, finished: datetime.datetime) -> dict:
    """What bench.json's `run` holds: provenance()'s commit and dirty, and when the run started and finished."""

    def utc(moment):
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")

    return dict(code, started=utc(started), finished=utc(finished), seconds=(finished - started).total_seconds())


def _table(header: list, rows: list, align: str = "") -> str:
    """A Markdown table; align: a letter per column, l or r (figures), r for the columns it does not name but the
    first."""
    align = (align or "l").ljust(len(header), "r")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _thousands(values) -> str:
    return ", ".join(f"{v / 1000:.1f}k" for v in values)


def _seconds(value) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def _header(report: dict) -> str:
    m, run, s = report["machine"], report["run"], report["settings"]
    if run["commit"] is None:
        code = "unknown (not a git checkout)"
    else:
        code = f"`{run['commit']}`" + (
            ", with changes to tracked files not committed" if run["dirty"] else ", no changes to tracked files"
        )
    missing = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f not in m["cpu_features"]]
    features = ", ".join(m["cpu_features"]) or "none of those listed"
    if missing and "asimd" not in m["cpu_features"]:
        features += f" (not {', '.join(missing)})"
    minutes = run["seconds"] / 60
    rows = [
        ("date", f"{run['started']} to {run['finished']} ({minutes:.0f} min)"),
        ("commit", code),
        ("CPU", f"{m['cpu']}, {m['cores']} cores"),
        ("CPU features", features),
        ("GPUs", ", ".join(m["gpus"]) or "none"),
        ("Python", m["python"]),
        ("TensorFlow", m["tf_version"]),
        ("JAX", m["jax_version"] or "not installed"),
        ("PyTorch", m["torch_version"] or "not installed"),
        (
            "settings",
            ("`--quick`, a smoke run: not this machine's figures; " if s["quick"] else "")
            + f"batch {s['per_replica_batch_size']} per replica, {s['warmup_steps']} warm-up and "
            f"{s['timed_steps']} timed steps; rounds: lineup {s['rounds']}, turns {s['turns']}, "
            f"breakdown {s['breakdown_rounds']}, race "
            f"{s['race_rounds']} (at most {s['max_epochs']} epochs), precisions {s['precision_rounds']}, checkpoints "
            f"{s['checkpoint_rounds']}, whole process {s['process_rounds']}",
        ),
    ]
    return "\n\n".join(
        [
            f"# Bench results: {m['kind']}",
            "The last full `python -m bench` (`make bench`) on this kind of machine: every full run on one replaces "
            "this file. How the figures are measured and how to read them: "
            "[docs/performance.md](../../docs/performance.md). "
            "Compare figures within this file: another run, even on the same kind of machine, meets other neighbours.",
            _table(["run", ""], rows, "ll"),
        ]
    )


def _steady(report: dict) -> str:
    rows = []
    for r in report["results"]:
        own = r["name"] in ("distmnist (default, own process)", "jax scan")
        spread = (
            f"median of {len(r['rounds'])} turns ({min(r['rounds']) / 1000:.1f}k-{max(r['rounds']) / 1000:.1f}k)"
            if own
            else f"best of {_thousands(r['rounds'])}"
        )
        rows.append([r["name"], r["replicas"], r["device"], _rate(r["examples_per_sec"]), spread])
    ratios = report["ratios"]
    names = {
        "vs_keras_default": "Keras `fit`, default",
        "vs_keras_tuned": "Keras `fit`, tuned",
        "vs_tutorial_eager": "the tutorial's eager loop",
        "of_compute_bound": "the compute bound",
        "vs_jax_scan": "JAX's scan (median of the paired turns)",
    }
    return "\n\n".join(
        [
            "## Steady state: examples per second",
            _table(["contender", "replicas", "device", "examples/s", "rounds"], rows, "lrlrl"),
            "distmnist's default on one replica, as a multiple of:",
            _table(["other", "ratio"], [[names.get(k, k), f"{v:.2f}"] for k, v in ratios.items()]),
        ]
    )


def _turns(section: dict) -> str:
    head = "## distmnist's default over JAX's scan, paired turns, each in a process of its own"
    if "skipped" in section:
        return f"{head}\n\nSkipped: {section['skipped']}."
    rows = [
        [
            replicas,
            f"{by['median']:.3f}",
            f"{by['quartiles'][0]:.3f}-{by['quartiles'][1]:.3f}",
            f"{min(by['ratios']):.3f}-{max(by['ratios']):.3f}",
        ]
        for replicas, by in section["by_replicas"].items()
    ]
    return (
        f"{head}\n\n"
        + _table(["replicas", "median ratio", "quartiles", "range"], rows, "rr")
        + f"\n\n{section['turns']} turns for each replica count."
    )


def _breakdown(section: dict) -> str:
    head = "## Step breakdown: one CPU replica, microseconds a step (median round)"
    if "skipped" in section:
        return f"{head}\n\nSkipped: {section['skipped']}."
    parts = [head] + _breakdown_tables(section["median"])
    if "two_replicas" in section:
        parts += [
            "## Step breakdown: two CPU replicas, microseconds a step (median round)",
            "JAX's all-reduce is a kernel of its XLA program (its wait for the other replica included); "
            "distmnist's is TensorFlow's ReductionToOneDevice between each replica's two XLA launches, outside "
            "them.",
        ] + _breakdown_tables(section["two_replicas"]["median"], all_reduce=True)
    return "\n\n".join(parts)


def _breakdown_tables(median: dict, all_reduce: bool = False) -> list:
    parts = [
        _table(
            ["contender", "wall", "in XLA's executable", "outside it", *(["all-reduce"] if all_reduce else [])],
            [
                [
                    name,
                    f"{b['wall_us']:,.0f}",
                    f"{b['in_xla_us']:,.0f}",
                    f"{b['outside_us']:,.0f}",
                    *([f"{b['all_reduce_us']:,.0f}"] if all_reduce else []),
                ]
                for name, b in median.items()
            ],
        )
    ]
    for name, b in median.items():
        parts += [
            f"The largest kernels of {name}, their share of a step:",
            _table(["kernel", "us a step"], [[f"`{kernel}`", f"{us:,.0f}"] for kernel, us in b["top"]]),
        ]
    return parts


def _race_rows(by: dict) -> list:
    return [
        [
            name,
            _seconds(r["seconds"]),
            ", ".join(_seconds(s) if s else "-" for s in r["rounds"]),
            r["epochs"],
            f"{r['accuracy']:.2%}",
        ]
        for name, r in by.items()
    ]


RACE_HEADER = ["contender", "seconds (median round)", "rounds (s)", "epochs", "test accuracy"]
RACE_ALIGN = "lrlrr"


def _race(section: dict) -> str:
    return "\n\n".join(
        [
            f"## Time to {section['target']:.1%} test accuracy",
            _table(RACE_HEADER, _race_rows(section["by"]), RACE_ALIGN),
            f'Learning rate {section["learning_rate"]}, {section["rounds"]} round(s), one replica; "-": not reached in '
            "that round.",
        ]
    )


def _precisions(section: dict) -> str:
    batches = sorted({r["batch"] for r in section["rows"]})
    cells = {}
    for r in section["rows"]:
        cells.setdefault((r["name"], r["precision"]), {})[r["batch"]] = _rate(r["examples_per_sec"])
    rows = [[name, precision, *(by.get(b, "") for b in batches)] for (name, precision), by in cells.items()]
    parts = [
        "## Precisions: examples per second, one replica",
        _table(["contender", "precision", *(f"batch {b}" for b in batches)], rows, "ll"),
    ]
    parts += [f"Skipped: {name}, {why}." for name, why in section["skipped"].items()]
    precisions = list(next(iter(section["ratios"].values()), {}))
    parts += [
        "distmnist over the fastest other contender in any precision, and distmnist's mixed precisions over "
        "its float32 (the median of the rounds' ratios):",
        _table(
            [
                "batch",
                *(f"{p} over the fastest other" for p in precisions),
                *(f"{p} over float32" for p in precisions if p != "float32"),
            ],
            [
                [
                    batch,
                    *(f"{section['ratios'][batch][p]:.2f}" for p in precisions),
                    *(f"{section['over_float32'][batch][p]:.2f}" for p in precisions if p != "float32"),
                ]
                for batch in section["ratios"]
            ],
            "r",
        ),
    ]
    parts += [
        "distmnist at its best precision over each contender at its own best, per batch:",
        _table(
            ["batch", "distmnist's best", "contender", "its best", "distmnist's best over it"],
            [
                [
                    batch,
                    f"{by['distmnist']['precision']} ({_rate(by['distmnist']['examples_per_sec'])})",
                    name,
                    f"{b['precision']} ({_rate(b['examples_per_sec'])})",
                    f"{b['ratio']:.2f}x",
                ]
                for batch, by in section["best"].items()
                for name, b in by.items()
                if name != "distmnist"
            ],
            "rllll",
        ),
    ]
    for precision, by in section["race"].items():
        parts += [
            f"Time to {section['target']:.1%} in {precision} ({section['race_rounds']} round(s)):",
            _table(RACE_HEADER, _race_rows(by), RACE_ALIGN),
        ]
    return "\n\n".join(parts)


def _checkpoints(section: dict) -> str:
    return "\n\n".join(
        [
            "## Checkpoints: what a save costs the training",
            _table(
                [
                    "every",
                    "paired rounds",
                    "block without a save (ms)",
                    "with a save (ms)",
                    "a save costs (ms)",
                    "share of the training",
                    "goal",
                    "in CPU seconds: a save costs (ms)",
                    "share",
                    "its own seconds, counted (ms)",
                    "share of a block's CPU seconds",
                ],
                [
                    [
                        f"{section['every']} steps",
                        section["rounds"],
                        f"{section['block_s'] * 1e3:.0f}",
                        f"{section['block_with_save_s'] * 1e3:.0f}",
                        f"{section['cost_s'] * 1e3:.1f}",
                        f"{section['cost_fraction']:.1%}",
                        f"<= {section['goal']:.0%}",
                        f"{section['cpu_cost_s'] * 1e3:.1f}",
                        f"{section['cpu_cost_fraction']:.1%}",
                        f"{section['own_s'] * 1e3:.1f}" if "own_s" in section else "",
                        f"{section['own_fraction']:.1%}" if "own_fraction" in section else "",
                    ]
                ],
            ),
        ]
    )


def _whole_process(section: dict) -> str:
    names = {
        "tensorflow import": '`python -c "import tensorflow"`',
        "distmnist.train": "`python -m distmnist.train` (defaults)",
        "keras fit script": "the Keras `fit` script",
    }
    accuracy = section["accuracy"]
    rows = [
        [
            names.get(name, name),
            ", ".join(f"{s:.1f}" for s in section["seconds"][name]),
            f"{median:.1f}",
            f"{accuracy[name]:.2%}" if name in accuracy else "",
        ]
        for name, median in section["median_s"].items()
    ]
    parts = [
        f"## Whole process: seconds from the command to the finished model ({section['rounds']} round(s))",
        _table(["command", "rounds (s)", "median (s)", "test accuracy"], rows, "llrr"),
        _table(
            ["ratio", "this run", "goal"],
            [
                [
                    "the Keras script's time over distmnist's",
                    f"{section['keras_over_distmnist']:.2f}x",
                    f">= {section['ratio_goal']}x",
                ],
                [
                    f"distmnist outside its training calls ({section['distmnist_outside_training_s']:.1f} s) over the "
                    "bare import",
                    f"{section['outside_over_import']:.2f}x",
                    f"<= {section['outside_goal']}x",
                ],
            ],
        ),
        "distmnist's parts in its median round (`run.json`'s `timings`):",
        _table(
            ["part", "seconds"],
            [
                [name.removesuffix("_s").replace("_", " "), f"{value:.2f}"]
                for name, value in section["distmnist_timings"].items()
            ],
        ),
    ]
    return "\n\n".join(parts)


def markdown(report: dict) -> str:
    """The results file's text: the run, then every section the run measured, in the bench's order."""
    parts = [
        _header(report),
        _steady(report),
        _turns(report["distmnist_over_jax"]),
        _breakdown(report["step_breakdown"]),
        _race(report["time_to_accuracy"]),
    ]
    for key, section in (("precisions", _precisions), ("checkpoints", _checkpoints), ("whole_process", _whole_process)):
        if key in report:
            parts.append(section(report[key]))
    return "\n\n".join(parts) + "\n"


def write(report: dict, folder: str = RESULTS_DIR) -> str:
    """folder/<kind>.md from the report (replaced whole, never half-written); its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{report['machine']['kind']}.md")
    files.write_bytes(path, markdown(report).encode())
    return path

"""A sweep: one distmnist.train run per point of a grid (or a list) of settings, into one logdir, compared in
TensorBoard's HParams dashboard.

  python -m distmnist.sweep --learning_rate=0.5,1.0,1.5 --batch_size=64,128        # a 3 x 2 grid
  python -m distmnist.sweep --learning_rate=0.5,1.5 --seed=1,2 --zip              # a list: (0.5, 1), (1.5, 2)
  python -m distmnist.sweep --learning_rate=0.5,1.5 --epochs=2 --parallel=2       # any train flag, fixed for all

Every train flag takes one value (fixed for every point) or a comma-separated list (swept). Each point runs as
its own `python -m distmnist.train` process, its run named after its swept values (`learning_rate=0.5,
batch_size=64`), in --logdir (default logs/sweep); --parallel=N runs N at once. A point whose run.json exists is
done and skipped when the sweep is run again; a point cut short resumes from its checkpoint; a point that fails
(a diverging learning rate) is recorded with its one-line reason and the others go on. At the end: a table
sorted by test accuracy, sweep.json and sweep.svg (accuracy against each swept setting) in the logdir. The
sweep declares its HParams experiment in the logdir (experiment.py), the swept settings marked as differing;
that is all it uses TensorFlow for, after every point's settings have been checked.
"""

import concurrent.futures
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from absl import flags

from distmnist.common import cli, config, files
from distmnist.common.config import TrainConfig
from distmnist.common.errors import OutOfRoom, Stopped, UserError
from distmnist.runs import outputs

NOT_SWEPT = ("logdir", "run_name", "events_dir", "export_dir", "overwrite", "profile_steps")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The sweep's flags: every train setting as text (one value or a list), and its own."""
    for name, _, _, help_text, _, _ in config.field_descriptions():
        if name not in NOT_SWEPT:
            flags.DEFINE_string(name, None, f"{help_text} (one value, or a comma-separated list to sweep)")
    flags.DEFINE_string(
        "logdir", "logs/sweep", "the sweep's folder: one run directory per point, sweep.json, sweep.svg"
    )
    flags.DEFINE_boolean("zip", False, "pair the lists element by element (a list of points) instead of crossing them")
    flags.DEFINE_integer("parallel", 1, "points trained at once, each its own process")


SWEPT_NAMES = [name for name, *_ in config.field_descriptions() if name not in NOT_SWEPT]
FAILED = "failed"


@dataclasses.dataclass
class Point:
    run_name: str
    settings: dict  # the swept settings' values, as given
    flags: dict  # every setting given on the command line, as given
    config: TrainConfig  # what the run's settings make (checked)

    def command(self, logdir: str) -> list:
        return [
            sys.executable,
            "-m",
            "distmnist.train",
            f"--logdir={logdir}",
            f"--run_name={self.run_name}",
            *(f"--{name}={value}" for name, value in self.flags.items()),
        ]


def _parse(name: str, text: str) -> Any:
    """One setting's value from its text, as its flag would read it (UserError naming it when it does not)."""
    kind = {n: k for n, _, k, *_ in config.field_descriptions()}[name]
    try:
        if kind in (bool, bool | None):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind in (int, int | None):
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise UserError(f"--{name}: {text!r} is not a {getattr(kind, '__name__', 'value')}") from None


def plan(given: dict, zipped: bool) -> list:
    """The points of a sweep from {setting: its text as given}; every point's config is checked (UserError
    naming the first bad value) before anything runs."""
    swept = {name: text.split(",") for name, text in given.items() if "," in text}
    fixed = {name: text for name, text in given.items() if "," not in text}
    if zipped:
        lengths = {len(values) for values in swept.values()}
        if len(lengths) > 1:
            raise UserError(
                "--zip pairs the lists element by element: give every swept setting the same number of "
                f"values (got {', '.join(f'--{n}: {len(v)}' for n, v in swept.items())})"
            )
        combos = list(zip(*swept.values(), strict=True))
    else:
        combos = list(itertools.product(*swept.values()))
    points = []
    for combo in combos:
        settings = dict(zip(swept, combo, strict=True))
        values = {name: _parse(name, text.strip()) for name, text in {**fixed, **settings}.items()}
        run_name = ",".join(f"{name}={text.strip()}" for name, text in settings.items()) or "run"
        if "/" in run_name:
            raise UserError(f"a swept value must not contain '/': {run_name!r}")
        checked = TrainConfig(**values, run_name=run_name)  # now: a bad point fails the sweep before any run starts
        points.append(Point(run_name, {n: values[n] for n in settings}, {**fixed, **settings}, checked))
    names = [p.run_name for p in points]
    if len(set(names)) != len(names):
        raise UserError("two points of the sweep are the same: give each swept setting distinct values")
    return points


def _result(logdir: str, point: Point) -> dict | None:
    """The finished run's figures from its run.json, None when it has none (not run, or not finished)."""
    path = os.path.join(logdir, point.run_name, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    loss = summary["history"]["loss"]
    return {
        "status": "ok",
        "final_test_accuracy": summary["final_test_accuracy"],
        "final_loss": loss[-1][1] if loss else None,
        "examples_per_sec": summary["examples_per_sec"],
        "wall_time_s": summary["wall_time_s"],
        "calibration_ece": summary.get("calibration", {}).get("test", {}).get("ece_after"),
    }


def _reason(log_path: str, status: int) -> str:
    """The run's one-line error (its last line on stderr naming an error), else its exit status."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if "error:" in line]
    except OSError:
        lines = []
    return lines[-1].split("error: ", 1)[-1] if lines else f"exit status {status}"


class Runner:
    """Runs points as child processes; a SIGINT or SIGTERM to the sweep goes on to every running point (each
    stops at its next call boundary with a checkpoint) and no further point starts."""

    def __init__(self, logdir: str, say: Callable[[str], None]) -> None:
        self.logdir = logdir
        self.say = say
        self.signum: int | None = None
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            self.signum = signum
            for child in self._children:
                child.send_signal(signum)

    def __enter__(self) -> "Runner":
        self._previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def run(self, point: Point) -> dict | None:
        """The point's outcome; None when the sweep was stopped before it started."""
        log_path = os.path.join(self.logdir, "sweep-logs", point.run_name + ".log")
        with self._lock:
            if self.signum is not None:
                return None
            log = open(log_path, "w")
            child = subprocess.Popen(
                point.command(self.logdir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )  # signals reach it through the sweep, once
            self._children.add(child)
        with log:
            status = child.wait()
        with self._lock:
            self._children.discard(child)
        return _outcome(self.logdir, point, status, log_path, self.say)


def _outcome(logdir: str, point: Point, status: int, log_path: str, say: Callable[[str], None]) -> dict:
    result = _result(logdir, point)
    if status == 0 and result is not None:
        say(f"  done   {point.run_name}: test accuracy {result['final_test_accuracy']:.4f}")
        return result
    if status in (130, 143):  # stopped by a signal: it resumes when the sweep is run again
        return {"status": "stopped", "reason": _reason(log_path, status), "exit_status": status}
    reason = _reason(log_path, status)
    say(f"  failed {point.run_name}: {reason}")
    return {"status": FAILED, "reason": reason, "exit_status": status}


def _declare(logdir: str, configs: list) -> None:
    from distmnist.environment import tfquiet

    tfquiet.import_tensorflow()
    from distmnist.runs import experiment

    experiment.declare(logdir, experiment.differing(configs))


def table(rows: list) -> str:
    """The results, best test accuracy first, failed points last."""
    ordered = sorted(rows, key=lambda r: (r["status"] != "ok", -(r.get("final_test_accuracy") or 0)))
    width = max([len("run")] + [len(r["run_name"]) for r in rows])
    lines = [f"{'run':<{width}}  {'accuracy':>8}  {'loss':>7}  {'examples/s':>10}  {'wall s':>6}"]
    for r in ordered:
        if r["status"] == "ok":
            loss = f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-"
            lines.append(
                f"{r['run_name']:<{width}}  {r['final_test_accuracy']:>8.4f}  {loss:>7}  "
                f"{r['examples_per_sec'] or 0:>10,.0f}  {r['wall_time_s']:>6.1f}"
            )
        else:
            lines.append(f"{r['run_name']:<{width}}  {r['status']}" + (f": {r['reason']}" if "reason" in r else ""))
    return "\n".join(lines)


def run_sweep(
    given: dict, logdir: str, zipped: bool = False, parallel: int = 1, say: Callable[[str], None] = print
) -> dict:
    """Runs every point not yet done; writes and returns sweep.json's content."""
    if parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    points = plan(given, zipped)
    TrainConfig(logdir=logdir)  # a path a filesystem takes
    outputs.check_sweep_folder(logdir)  # before anything is written: it replaces only what a sweep wrote
    os.makedirs(os.path.join(logdir, "sweep-logs"), exist_ok=True)
    _declare(logdir, [p.config for p in points])
    results = {p.run_name: _result(logdir, p) for p in points}
    todo = [p for p in points if results[p.run_name] is None]
    say(
        f"sweep: {len(points)} points in {logdir}, {len(points) - len(todo)} already done, {len(todo)} to run"
        + (f", {parallel} at a time" if parallel > 1 and todo else "")
    )
    lock = threading.Lock()

    def locked_say(line: str) -> None:
        with lock:
            say(line)

    with Runner(logdir, locked_say) as runner, concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for point, outcome in zip(todo, pool.map(runner.run, todo), strict=True):
            results[point.run_name] = outcome or {"status": "not started"}
    rows = [{"run_name": p.run_name, "settings": p.settings, **(results[p.run_name] or {})} for p in points]
    swept = sorted({name for p in points for name in p.settings})
    report = {
        "logdir": logdir,
        "swept": swept,
        "fixed": {n: v for n, v in given.items() if "," not in v},
        "points": rows,
    }
    files.write_json(os.path.join(logdir, "sweep.json"), report)
    _plot(report, os.path.join(logdir, "sweep.svg"))
    say(table(rows))
    say(
        f"wrote {os.path.join(logdir, 'sweep.json')} and {os.path.join(logdir, 'sweep.svg')}; "
        f"tensorboard --logdir {logdir} compares the runs (HParams tab)"
    )
    if runner.signum is not None:
        left = sum(r["status"] in ("stopped", "not started") for r in rows)
        raise Stopped(
            f"stopped by {signal.Signals(runner.signum).name} with {left} point(s) left; run the same "
            "command to finish the sweep",
            128 + runner.signum,
        )
    return report


def _plot(report: dict, path: str) -> None:
    """Test accuracy against each swept setting, one panel per setting (finished points only)."""
    from distmnist.runs import plots

    plt = plots.plt
    swept = report["swept"] or ["run_name"]
    fig, axes = plt.subplots(1, len(swept), figsize=(4.2 * len(swept), 3.6), squeeze=False)
    done = [r for r in report["points"] if r["status"] == "ok"]
    for ax, name in zip(axes[0], swept, strict=True):
        values = [r["settings"].get(name, r["run_name"]) for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = None if numeric else sorted({str(v) for v in values})
        xs = values if labels is None else [labels.index(str(v)) for v in values]
        ax.scatter(xs, [r["final_test_accuracy"] for r in done], color="tab:blue")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(name)
        ax.set_ylabel("final test accuracy")
        ax.grid(True, alpha=0.3)
    failed = len(report["points"]) - len(done)
    fig.suptitle(f"sweep: {len(done)} runs" + (f", {failed} failed (not shown)" if failed else ""), fontsize=10)
    fig.tight_layout()  # labels that vary with the results
    plots.save_svg(fig, path)


def main() -> None:
    given = {name: FLAGS[name].value for name in SWEPT_NAMES if FLAGS[name].value is not None}
    try:
        run_sweep(given, FLAGS.logdir, FLAGS.zip, FLAGS.parallel)
    except Exception as exc:  # noqa: BLE001  the sweep's own files (each point's run says so of its own)
        error = (
            exc
            if isinstance(exc, OSError) and files.no_room(exc)
            else files.no_room_in(str(exc))
            if type(exc).__module__.startswith("tensorflow")
            else None
        )
        if error is None:
            raise
        raise OutOfRoom(error, "run the same command: finished points are kept") from None


if __name__ == "__main__":
    cli.run(main, prog="distmnist.sweep", define_flags=define_flags)

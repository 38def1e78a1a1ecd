"""Why is TensorFlow not using my GPU? One line per check, each with what it found and what to do.

  python -m distmnist.doctor           # checks, then a short training run on the default strategy
  python -m distmnist.doctor --json    # the same as one JSON object

Exit status 0 when this machine can train on what it has (a CPU-only machine can), 1 when something is broken
(GPUs that TensorFlow cannot use, a device that cannot compile or all-reduce, a training step that fails).
"""

import dataclasses
import json

from absl import flags

from distmnist.common import cli
from distmnist.common.errors import UserError
from distmnist.environment.checks import diagnose

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_boolean("json", False, "Print the report as one JSON object instead of lines.")
    flags.DEFINE_integer("smoke_steps", 200, "Training steps of the smoke run (0: skip it).")


def main() -> int:
    if FLAGS.smoke_steps < 0:
        raise UserError(f"--smoke_steps must be >= 0, got {FLAGS.smoke_steps}")
    checks = diagnose(FLAGS.smoke_steps)
    broken = [c for c in checks if c.status == "FAIL"]
    if FLAGS.json:
        print(json.dumps({"ok": not broken, "checks": [dataclasses.asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(f"{c.status:<5} {c.name:<15} {c.found}" + (f"\n      {'':<15} -> {c.fix}" if c.fix else ""))
        print(
            "verdict: "
            + (
                "this machine can train on "
                + ("its GPUs" if any(c.name == "gpus" and c.status == "ok" for c in checks) else "its CPU")
                if not broken
                else f"broken: {', '.join(c.name for c in broken)} (see the lines above)"
            )
        )
    return 1 if broken else 0


if __name__ == "__main__":
    cli.run(main, prog="distmnist.doctor", define_flags=define_flags)

"""The bench's side of its contenders in processes of their own (solo.py): their command and environment, one
reply from a fresh process, and the failure named by the last line the process wrote to stderr.

Each process starts in the checkout (bench.CHECKOUT), so that `python -m bench.solo` and the distmnist it imports
are this checkout's, wherever the bench itself was started."""

import json
import os
import subprocess
import sys

from bench import CHECKOUT, xlaprofile
from bench.timing import Timing
from distmnist.common.errors import RunFailed


def environment(contender: str, replicas: int, platform: str = "cpu", kernels: bool = False) -> dict:
    """The environment the contender needs: on CPUs, JAX's host platform split into `replicas` devices; JAX's
    XLA as JAX's users run it, without the options distmnist sets for TensorFlow's (xlaflags.py). With kernels,
    XLA records every kernel it runs for the profiler (xlaprofile.py)."""
    from distmnist.environment import xlaflags

    env = dict(os.environ)
    xla_flags = env.get("XLA_FLAGS", "")
    if contender == "jax":
        xla_flags = xlaflags.as_the_user_set(xla_flags)
    if kernels:
        xla_flags = f"{xla_flags} {xlaprofile.TRACE_FLAG}"
    if platform == "cpu":
        xla_flags = f"{xla_flags} --xla_force_host_platform_device_count={replicas}"
    env["XLA_FLAGS"] = xla_flags.strip()
    env["JAX_PLATFORMS"] = platform
    return env


def command(contender: str, npz: str, platform: str = "cpu", jit_compile=None, **settings) -> list:
    """`python -m bench.solo` for the contender with these flags (jit_compile: distmnist's XLA, None for its
    default)."""
    return [sys.executable, "-m", "bench.solo", f"--contender={contender}", f"--npz={npz}", f"--platform={platform}",
            *(f"--{flag}={value}" for flag, value in settings.items()),
            *([f"--{'' if jit_compile else 'no'}jit_compile"] if jit_compile is not None else [])]


def start(contender: str, npz: str, replicas: int, platform: str, errors, **settings) -> subprocess.Popen:
    """A process of the contender that stays up (solo.py --serve), its stdin and stdout pipes, stderr into errors."""
    return subprocess.Popen(command(contender, npz, platform, replicas=replicas, **settings),
                            env=environment(contender, replicas, platform), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=CHECKOUT)


def reply(contender: str, process: subprocess.Popen, errors) -> dict:
    """The next line a process from start() prints, parsed; RunFailed with its last stderr line if it ended."""
    line = process.stdout.readline()
    if not line:
        process.wait()
        errors.seek(0)
        raise failed(contender, errors.read(), process.returncode)
    return json.loads(line)


def run(contender: str, npz: str, platform: str = "cpu", jit_compile=None, replicas: int = 1, kernels: bool = False,
        **settings) -> dict:
    """The last line solo.py prints, parsed, for the contender in a fresh process with these flags; RunFailed with
    its last stderr line."""
    done = subprocess.run(command(contender, npz, platform, jit_compile, replicas=replicas, **settings),
                          env=environment(contender, replicas, platform, kernels), capture_output=True, text=True,
                          cwd=CHECKOUT)
    if done.returncode != 0 or not done.stdout.strip():
        raise failed(contender, done.stderr, done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(contender: str, npz: str, timing: Timing, precision: str = "float32", jit_compile=None,
            platform: str = "cpu") -> dict:
    """One contender ("jax", "torch" or "distmnist") on one replica (the platform's first device), in a fresh
    process: its {"examples_per_sec", ...} (one untimed run of timed_steps first), or {"skipped": why}."""
    return run(contender, npz, platform, jit_compile, batch_size=timing.per_replica_batch_size,
               steps=timing.timed_steps, learning_rate=timing.learning_rate, seed=timing.seed, precision=precision)


def race(contender: str, npz: str, settings, target: float, max_epochs: int, platform: str = "cpu") -> dict:
    """solo.py's race for "distmnist", "jax" or "torch" on one replica, in a fresh process, with the
    TrainerSettings' batch, learning rate, seed and precision (and, for distmnist, XLA): {"seconds" (None: not
    reached), "epochs", "accuracy", "epoch_seconds", ...}."""
    return run(contender, npz, platform, settings.jit_compile if contender == "distmnist" else None,
               batch_size=settings.batch_size, learning_rate=settings.learning_rate, seed=settings.seed,
               precision=settings.precision, target_accuracy=target, max_epochs=max_epochs)


def failed(contender: str, stderr: str, status: int) -> RunFailed:
    """The error for a contender's process that failed: the last line it wrote to stderr."""
    last = (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
    return RunFailed(f"the {contender} contender in its own process failed: {last}")

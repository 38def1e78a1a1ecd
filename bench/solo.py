"""The entry point of the bench's contenders that run in a process of their own, so that they are compared on
equal terms: JAX's compiled scan (contenders/jax_scan.py: no TensorFlow in its process; JAX's CPU devices are
fixed by XLA_FLAGS before JAX starts), PyTorch's eager loop (contenders/pytorch_eager.py, one CPU) and distmnist's
default trainer (contenders/distmnist_trainer.py). The bench starts them (ownprocess.py); by hand, from the
checkout:

  python -m bench.solo --contender=jax --npz=mnist.npz --replicas=2 --batch_size=128 --steps=400
  python -m bench.solo --contender=distmnist --npz=mnist.npz --replicas=2 --serve=16
  python -m bench.solo --contender=torch --npz=mnist.npz --learning_rate=1.5 --target_accuracy=0.98

Each contender runs one untimed run of `steps` steps (compiling, caches), then `steps` timed, and prints one JSON
line: examples_per_sec, devices, final_loss (and its framework's version); {"skipped": why} where JAX or PyTorch is
not installed. With --serve=N the process stays up after its untimed run (printing {"ready": true, ...}) and runs
`steps` timed steps for each line "go" on stdin, up to N: the bench's contenders take turns so (turns.py). With
--profile=DIR the timed run runs under the contender's profiler instead, and the line is {"seconds", "steps",
"trace"}: where its time goes, for the bench's step breakdown (breakdown.py, xlaprofile.py). With
--target_accuracy the contender instead trains epoch by epoch (a fresh permutation each, the partial batch
dropped), checks the whole test set after each, and prints {"seconds" (null: not reached in --max_epochs),
"epochs", "accuracy", "epoch_seconds"}: the time from the first step (compiling included) to the check that
reached the target, for the bench's race (race.py).
"""

import importlib
import json
import sys

from absl import flags

from distmnist.common import cli

CONTENDERS = {
    "jax": "bench.contenders.jax_scan",
    "torch": "bench.contenders.pytorch_eager",
    "distmnist": "bench.contenders.distmnist_trainer",
}  # imported only when it is the one that runs


def _contender(name: str):
    return importlib.import_module(CONTENDERS[name])


def _warmed(
    contender: str,
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    platform: str,
    turns: int = 1,
    precision: str = "float32",
    jit_compile=None,
):
    """The contender's (run, global batch, facts) after one untimed run of `steps` steps (compilation, caches);
    run is None where the contender is not installed."""
    extra = {"turns": turns, "jit_compile": jit_compile} if contender == "distmnist" else {}
    run, global_batch, facts = _contender(contender).runner(
        npz, replicas, per_replica_batch_size, steps, learning_rate, seed, platform, precision=precision, **extra
    )
    if run is not None:
        run()
    return run, global_batch, facts


def measure(
    contender: str,
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    platform: str = "cpu",
    precision: str = "float32",
    jit_compile=None,
) -> dict:
    """One untimed run of `steps` steps (compilation, caches), then one timed."""
    run, global_batch, facts = _warmed(
        contender,
        npz,
        replicas,
        per_replica_batch_size,
        steps,
        learning_rate,
        seed,
        platform,
        precision=precision,
        jit_compile=jit_compile,
    )
    if run is None:
        return facts
    return {**_timed(run, steps * global_batch), **facts}


def _timed(run, examples: int) -> dict:
    seconds, final_loss = run()
    return {"examples_per_sec": examples / seconds, "final_loss": final_loss}


def serve(
    contender: str,
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    platform: str = "cpu",
    turns: int = 1000,
) -> None:
    """Turn-taking: after one untimed run prints {"ready": ...}; then each line "go" on stdin runs `steps` steps
    and prints {"examples_per_sec": ...}, until stdin ends."""
    run, global_batch, facts = _warmed(
        contender, npz, replicas, per_replica_batch_size, steps, learning_rate, seed, platform, turns
    )
    if run is None:
        print(json.dumps(facts), flush=True)
        return
    print(json.dumps({"ready": True, **facts}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(json.dumps(_timed(run, steps * global_batch)), flush=True)


def profile(
    contender: str,
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    platform: str,
    logdir: str,
) -> dict:
    """One untimed run, then one run of `steps` steps under the contender's profiler, its trace written under
    logdir: {"seconds", "steps", "trace"} for xlaprofile.breakdown (the process needs XLA_FLAGS with
    xlaprofile.TRACE_FLAG: ownprocess.environment(..., kernels=True))."""
    from bench import xlaprofile

    run, _, facts = _warmed(contender, npz, replicas, per_replica_batch_size, steps, learning_rate, seed, platform)
    if run is None:
        return facts
    if contender == "jax":
        import jax

        start, stop = (lambda: jax.profiler.start_trace(logdir)), jax.profiler.stop_trace
    else:
        import tensorflow as tf

        start, stop = (lambda: tf.profiler.experimental.start(logdir)), tf.profiler.experimental.stop
    start()
    try:
        seconds, _ = run()
    finally:
        stop()
    return {"seconds": seconds, "steps": steps, "trace": xlaprofile.trace_file(logdir), **facts}


def define_flags() -> None:
    flags.DEFINE_enum("contender", None, list(CONTENDERS), "Which loop to time.")
    flags.DEFINE_string("npz", None, "MNIST's arrays (the bench writes them once for every contender).")
    flags.DEFINE_integer("replicas", 1, "Devices to train on.")
    flags.DEFINE_integer("batch_size", 128, "Per-replica batch size.")
    flags.DEFINE_integer("steps", 400, "Steps of each timed run.")
    flags.DEFINE_float("learning_rate", 0.1, "Plain SGD learning rate.")
    flags.DEFINE_integer("seed", 0, "Initialisation and shuffling.")
    flags.DEFINE_enum("platform", "cpu", ["cpu", "gpu"], "The devices' kind.")
    flags.DEFINE_integer("serve", 0, "Take turns: at most this many timed runs, each on a line 'go' from stdin.")
    flags.DEFINE_string("profile", "", "Profile the timed run, its trace written under this folder.")
    flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "The layers' type.")
    flags.DEFINE_boolean("jit_compile", None, "distmnist: XLA on or off (unset: the trainer's default).")
    flags.DEFINE_float(
        "target_accuracy", 0, "Instead of timing steps, the time to this test accuracy, checked every epoch (0: off)."
    )
    flags.DEFINE_integer("max_epochs", 15, "With --target_accuracy: give up after this many epochs.")
    flags.mark_flags_as_required(["contender", "npz"])


def main() -> None:
    f = flags.FLAGS
    common = (f.contender, f.npz, f.replicas, f.batch_size, f.steps, f.learning_rate, f.seed, f.platform)
    if f.target_accuracy:
        xla = {"jit_compile": f.jit_compile} if f.contender == "distmnist" else {}
        print(
            json.dumps(
                _contender(f.contender).race(
                    f.npz,
                    f.replicas,
                    f.batch_size,
                    f.learning_rate,
                    f.seed,
                    f.platform,
                    f.precision,
                    f.target_accuracy,
                    f.max_epochs,
                    **xla,
                )
            ),
            flush=True,
        )
    elif f.serve:
        serve(*common, turns=f.serve)
    elif f.profile:
        print(json.dumps(profile(*common, logdir=f.profile)), flush=True)
    else:
        print(json.dumps(measure(*common, precision=f.precision, jit_compile=f.jit_compile)), flush=True)


if __name__ == "__main__":
    cli.run(main, prog="bench.solo", define_flags=define_flags)

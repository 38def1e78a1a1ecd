"""The ways of training this MLP that distmnist.bench compares, each timed the same way: warm up, then run a
fixed number of steps at the same per-replica batch and report examples per second."""

import dataclasses
import functools
import json
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import tensorflow as tf

from distmnist.bench import solo
from distmnist.common.errors import RunFailed
from distmnist.data.dataset import Mnist
from distmnist.training import LAYER_SIZES, inputs
from distmnist.training.controller import run_steps
from distmnist.training.trainer import Trainer, TrainerSettings

FLOP_PER_EXAMPLE = 2.41e6  # forward 1.07 + backward 1.34 MFLOP for 784-512-256-10


@dataclasses.dataclass(frozen=True)
class Timing:
    """What every contender is measured with."""

    per_replica_batch_size: int = 128
    warmup_steps: int = 50
    timed_steps: int = 400
    learning_rate: float = 0.1  # small enough that no contender diverges; speed does not depend on it
    seed: int = 0


def _examples_per_sec(run_steps, timing: Timing, global_batch_size: int) -> float:
    """Warms up with run_steps(warmup_steps), then times run_steps(timed_steps).

    run_steps(n) must run n training steps and wait for them to finish.
    """
    run_steps(timing.warmup_steps)
    start = time.perf_counter()
    run_steps(timing.timed_steps)
    return timing.timed_steps * global_batch_size / (time.perf_counter() - start)


def tutorial_eager(mnist: Mnist, device: str, timing: Timing) -> float:
    """The tutorial as written: raw variables, an eager GradientTape loop over tf.data, assign_sub updates."""
    with tf.device(device):
        sizes = LAYER_SIZES
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            params.append(tf.Variable(tf.random.truncated_normal([fan_in, fan_out], stddev=0.1)))
            params.append(tf.Variable(tf.zeros([fan_out])))
        dataset = inputs.tfdata_pipeline(mnist.x_train, mnist.y_train, timing.per_replica_batch_size, 10000,
                                         timing.seed)
        batches = iter(dataset)

        def step():
            x, y = next(batches)
            with tf.GradientTape() as tape:
                h1 = tf.nn.relu(x @ params[0] + params[1])
                h2 = tf.nn.relu(h1 @ params[2] + params[3])
                out = h2 @ params[4] + params[5]
                loss = tf.reduce_mean(tf.square(y - out))
            grads = tape.gradient(loss, params)
            for p, g in zip(params, grads):
                p.assign_sub(timing.learning_rate * g)
            return loss

        def run_steps(n):
            for _ in range(n - 1):
                step()
            float(step())  # wait for the last step

        return _examples_per_sec(run_steps, timing, timing.per_replica_batch_size)


def keras_model(seed: int):
    """The same MLP in Keras, initialised as distmnist initialises it (uniform +-1/sqrt(fan_in))."""
    import keras

    layers = [keras.Input([LAYER_SIZES[0]])]
    for i, (fan_in, fan_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:])):
        limit = 1 / np.sqrt(fan_in)
        layers.append(keras.layers.Dense(
            fan_out, activation="relu" if i < len(LAYER_SIZES) - 2 else None,
            kernel_initializer=keras.initializers.RandomUniform(-limit, limit, seed=seed + 2 * i),
            bias_initializer=keras.initializers.RandomUniform(-limit, limit, seed=seed + 2 * i + 1)))
    return keras.Sequential(layers)


def compiled_keras(strategy: tf.distribute.Strategy, learning_rate: float, seed: int, tuned: bool,
                   steps_per_execution: int = 50, policy: str = "float32"):
    """policy: Keras's global dtype policy while the model is built (mixed_float16 also wraps the optimizer in
    Keras's LossScaleOptimizer, which compile does itself)."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model = keras_model(seed)
            # Keras's XLA cannot reach variables on other replicas' devices: tuned means XLA on one replica only.
            jit = strategy.num_replicas_in_sync == 1
            extra = {"steps_per_execution": steps_per_execution, "jit_compile": jit} if tuned else {}
            optimizer = keras.optimizers.SGD(learning_rate)
            if policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer, loss="mse", **extra)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def keras_dataset(mnist: Mnist, global_batch_size: int, seed: int) -> tf.data.Dataset:
    return inputs.tfdata_pipeline(mnist.x_train, mnist.y_train, global_batch_size, 10000, seed)


def _fit(model, dataset, **kwargs):
    """model.fit without Keras's warning that a tf.data input is not shuffled again (ours is already)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shuffle=True. was passed", category=UserWarning)
        model.fit(dataset, **kwargs)


def keras_fit(mnist: Mnist, strategy: tf.distribute.Strategy, timing: Timing, tuned: bool,
              policy: str = "float32") -> float:
    """Keras Model.fit on the tutorial's pipeline: default settings, or tuned (steps_per_execution, XLA)."""
    model = compiled_keras(strategy, timing.learning_rate, timing.seed, tuned, policy=policy)
    global_batch_size = timing.per_replica_batch_size * strategy.num_replicas_in_sync
    dataset = keras_dataset(mnist, global_batch_size, timing.seed)

    def run_steps(n):
        _fit(model, dataset, epochs=1, steps_per_epoch=n, verbose=0)

    return _examples_per_sec(run_steps, timing, global_batch_size)


def distmnist_trainer(mnist: Mnist, strategy: tf.distribute.Strategy, timing: Timing, input_path: str,
                      precision: str = "float32", jit_compile=None) -> float:
    """distmnist's own loop with the given input path and precision, its defaults otherwise (XLA as the run
    resolves it for this precision on these devices: jit_compile)."""
    settings = TrainerSettings(batch_size=timing.per_replica_batch_size, learning_rate=timing.learning_rate,
                               seed=timing.seed, input=input_path, precision=precision, jit_compile=jit_compile,
                               total_steps=timing.warmup_steps + timing.timed_steps)
    trainer = Trainer(settings, strategy, mnist)
    return _examples_per_sec(functools.partial(run_steps, trainer), timing, trainer.global_batch_size)


def take_turns(npz: str, replicas: int, platform: str, timing: Timing, turns: int) -> dict:
    """distmnist's default trainer and JAX's scan (solo.py), each in a process of its own that stays up, warmed
    up by one untimed run, then taking turns: each turn runs timing.timed_steps steps in one, then in the other
    (the order alternating), while the other waits. Returns {"distmnist": [examples/s per turn], "jax": [...],
    "ratios": [distmnist / jax per turn]}, or {"skipped": why} without JAX. Paired turns a few seconds apart
    see the same machine: these shared machines drift by 20-30% over minutes, and by more between spells.

    RunFailed with the last line a contender wrote to stderr when one fails."""
    names = ("distmnist", "jax")
    processes = {}
    try:
        for name in names:
            command = [sys.executable, "-m", "distmnist.bench.solo", f"--contender={name}", f"--npz={npz}",
                       f"--replicas={replicas}", f"--batch_size={timing.per_replica_batch_size}",
                       f"--steps={timing.timed_steps}", f"--learning_rate={timing.learning_rate}",
                       f"--seed={timing.seed}", f"--platform={platform}", f"--serve={turns}"]
            errors = tempfile.TemporaryFile(mode="w+")
            process = subprocess.Popen(command, env=solo.environment(name, replicas, platform), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=errors, text=True)
            processes[name] = (process, errors)
            ready = _reply(name, process, errors)
            if "skipped" in ready:
                return ready
        rates = {name: [] for name in names}
        for turn in range(turns):
            for name in names if turn % 2 == 0 else names[::-1]:
                process, errors = processes[name]
                process.stdin.write("go\n")
                process.stdin.flush()
                rates[name].append(_reply(name, process, errors)["examples_per_sec"])
        return dict(rates, ratios=[d / j for d, j in zip(rates["distmnist"], rates["jax"])])
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


def in_own_process(name: str, npz: str, timing: Timing, precision: str = "float32", jit_compile=None,
                   platform: str = "cpu") -> dict:
    """One contender of solo.py ("jax", "torch" or "distmnist") on one replica (the platform's first device), in a
    fresh process: its {"examples_per_sec", ...} (one untimed run of timed_steps first), or {"skipped": why}."""
    return _solo_reply(name, npz, platform, jit_compile, batch_size=timing.per_replica_batch_size,
                       steps=timing.timed_steps, learning_rate=timing.learning_rate, seed=timing.seed,
                       precision=precision)


def race_in_own_process(name: str, npz: str, settings: TrainerSettings, target: float, max_epochs: int,
                        platform: str = "cpu") -> dict:
    """solo.py's race for "distmnist", "jax" or "torch" on one replica, in a fresh process, with the settings'
    batch, learning rate, seed and precision (and, for distmnist, XLA): {"seconds" (None: not reached), "epochs",
    "accuracy", "epoch_seconds", ...}."""
    return _solo_reply(name, npz, platform, settings.jit_compile if name == "distmnist" else None,
                       batch_size=settings.batch_size, learning_rate=settings.learning_rate, seed=settings.seed,
                       precision=settings.precision, target_accuracy=target, max_epochs=max_epochs)


def _solo_reply(name: str, npz: str, platform: str, jit_compile, **settings) -> dict:
    """The last line solo.py prints, parsed, for the contender on one replica of the platform in a fresh process,
    with these flags (jit_compile: distmnist's XLA, None for its default); RunFailed with its last stderr line."""
    command = [sys.executable, "-m", "distmnist.bench.solo", f"--contender={name}", f"--npz={npz}",
               f"--platform={platform}", *(f"--{flag}={value}" for flag, value in settings.items()),
               *([f"--{'' if jit_compile else 'no'}jit_compile"] if jit_compile is not None else [])]
    done = subprocess.run(command, env=solo.environment(name, 1, platform), capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise _failed(name, done.stderr, done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_breakdown(npz: str, timing: Timing, rounds: int) -> dict:
    """Where one CPU replica's steps go, for distmnist's default trainer and JAX's scan, each in a process of its
    own (solo.py --profile) with XLA's kernel events on, the two alternating for `rounds` rounds: {"distmnist":
    [xlaprofile.breakdown per round], "jax": [...]}, or {"skipped": why} without JAX.

    RunFailed with the last line a contender wrote to stderr when one fails."""
    from distmnist.bench import xlaprofile

    made = {"distmnist": [], "jax": []}
    for round_number in range(rounds):
        for name in ("distmnist", "jax") if round_number % 2 == 0 else ("jax", "distmnist"):
            with tempfile.TemporaryDirectory(prefix="distmnist-profile-") as logdir:
                command = [sys.executable, "-m", "distmnist.bench.solo", f"--contender={name}", f"--npz={npz}",
                           f"--batch_size={timing.per_replica_batch_size}", f"--steps={timing.timed_steps}",
                           f"--learning_rate={timing.learning_rate}", f"--seed={timing.seed}", f"--profile={logdir}"]
                done = subprocess.run(command, env=solo.environment(name, 1, kernels=True), capture_output=True,
                                      text=True)
                if done.returncode != 0 or not done.stdout.strip():
                    raise _failed(name, done.stderr, done.returncode)
                reply = json.loads(done.stdout.strip().splitlines()[-1])
                if "skipped" in reply:
                    return reply
                with open(reply["trace"], "rb") as trace:
                    made[name].append(xlaprofile.breakdown(trace.read(), reply["steps"], reply["seconds"]))
    return made


def _reply(name: str, process, errors) -> dict:
    line = process.stdout.readline()
    if not line:
        process.wait()
        errors.seek(0)
        raise _failed(name, errors.read(), process.returncode)
    return json.loads(line)


def _failed(name: str, stderr: str, status: int) -> RunFailed:
    """The error for a contender's process that failed: the last line it wrote to stderr."""
    last = (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
    return RunFailed(f"the {name} contender in its own process failed: {last}")


@tf.function
def _repeated_matmul(a, b, n):
    total = tf.zeros([])
    for _ in tf.range(n):
        total += tf.matmul(a, b)[0, 0]
    return total


def matmul_flops_per_sec(device: str, sizes=(2048, 3072), min_seconds: float = 0.5) -> float:
    """The best FLOP/s of large float32 matmuls on the device: the ceiling for any way of training this MLP.

    Each size is timed over at least min_seconds of work: a first guess of the repeats (about a second on a
    2-core CPU, milliseconds on a GPU) is scaled up until the timing is that long.
    """
    best = 0.0
    with tf.device(device):
        for size in sizes:
            a = tf.random.uniform([size, size])
            b = tf.random.uniform([size, size])
            repeats = max(1, int(8e10 // (2 * size ** 3)))
            float(_repeated_matmul(a, b, tf.constant(1)))
            while True:
                start = time.perf_counter()
                float(_repeated_matmul(a, b, tf.constant(repeats)))
                seconds = time.perf_counter() - start
                if seconds >= min_seconds:
                    break
                repeats = int(repeats * min(100.0, 1.2 * min_seconds / max(seconds, 1e-6))) + 1
            best = max(best, 2.0 * size ** 3 * repeats / seconds)
    return best


def time_to_accuracy_distmnist(mnist: Mnist, strategy, target: float, max_epochs: int, settings: TrainerSettings):
    """(seconds from the first step until the test accuracy, checked every epoch, reaches the target, or None;
    epochs; accuracy), in this process (solo.trainer_race)."""
    reached = solo.trainer_race(Trainer(settings, strategy, mnist), target, max_epochs)
    return reached["seconds"], reached["epochs"], reached["accuracy"]


def time_to_accuracy_keras(mnist: Mnist, strategy, target: float, max_epochs: int, settings: TrainerSettings):
    """The same for tuned Keras with the same hyperparameters, initialisation and steps per epoch."""
    import keras

    global_batch_size = settings.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = len(mnist.x_train) // global_batch_size  # as distmnist: the partial batch dropped
    per_execution = max(k for k in range(1, 51) if steps_per_epoch % k == 0)  # must divide an epoch
    model = compiled_keras(strategy, settings.learning_rate, settings.seed, tuned=True,
                           steps_per_execution=per_execution, policy=settings.precision)
    test_x = mnist.x_test.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0
    reached = {}

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logits = self.model.predict(test_x, batch_size=2000, verbose=0)
            accuracy = float(np.mean(np.argmax(logits, axis=1) == mnist.y_test))
            reached.update(epoch=epoch + 1, accuracy=accuracy, seconds=time.perf_counter() - start)
            if accuracy >= target:
                self.model.stop_training = True

    dataset = keras_dataset(mnist, global_batch_size, settings.seed)
    start = time.perf_counter()
    _fit(model, dataset, epochs=max_epochs, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=[Stop()])
    hit = reached["accuracy"] >= target
    return (reached["seconds"] if hit else None), reached["epoch"], reached["accuracy"]

"""The bench's contenders that run in a process of their own, so that they are compared on equal terms: JAX's
compiled scan (no TensorFlow in its process; JAX's CPU devices are fixed by XLA_FLAGS before JAX starts),
PyTorch's eager loop (one CPU) and distmnist's default trainer.

  python -m distmnist.bench.solo --contender=jax --npz=mnist.npz --replicas=2 --batch_size=128 --steps=400
  python -m distmnist.bench.solo --contender=distmnist --npz=mnist.npz --replicas=2 --serve=16
  python -m distmnist.bench.solo --contender=torch --npz=mnist.npz --learning_rate=1.5 --target_accuracy=0.98

JAX, as its best users write it: the training set lives on the device(s) in its training dtype (float32
features, one-hot targets); one jax.jit call runs `steps` steps in a lax.scan with a static trip count, nothing
checked inside; with N replicas the global batch is sharded over N devices (CPU devices split by XLA_FLAGS, or
GPUs) along the batch axis and the weights are replicated (XLA's SPMD partitioner adds the all-reduce). The call
is made once untimed (it compiles for its length), then timed. PyTorch, as its users write it on a CPU: the same
resident data, an eager step over each batch's rows, bfloat16 by autocast. distmnist: its Trainer at its defaults
(TrainConfig) on 1 device or N (logical CPUs, or GPUs), the same learning rate and batch, one untimed run of
`steps` steps, then `steps` timed. Each prints one JSON line: examples_per_sec, devices, final_loss (and
jax_version); {"skipped": why} where JAX or PyTorch is not installed. With --serve=N the process stays up after
its untimed run (printing {"ready": true, ...}) and runs `steps` timed steps for each line "go" on stdin, up to N:
the bench's contenders take turns so (contenders.take_turns). With --profile=DIR the timed run runs under the
contender's profiler instead, and the line is {"seconds", "steps", "trace"}: where its time goes, for the bench's
step breakdown (contenders.step_breakdown, xlaprofile.py). With --target_accuracy the contender instead trains
epoch by epoch (a fresh permutation each, the partial batch dropped), checks the whole test set after each, and
prints {"seconds" (null: not reached in --max_epochs), "epochs", "accuracy", "epoch_seconds"}: the time from the
first step (compiling included) to the check that reached the target, for the bench's race (race.py).
"""

import json
import logging
import os
import sys
import time
import types
from typing import Optional

import numpy as np
from absl import flags

from distmnist.common import cli, safeio
from distmnist.common.errors import UserError
from distmnist.training import LAYER_SIZES  # without TensorFlow, which the JAX contender must not import

NOT_INSTALLED = "JAX is not installed (pip install -e '.[bench]' adds it)"
TORCH_NOT_INSTALLED = ("PyTorch is not installed (its CPU build: pip install torch --index-url "
                       "https://download.pytorch.org/whl/cpu)")
NO_BACKEND = ("this JAX has no {platform} backend (pip install -e '.[bench-gpu]' adds JAX with CUDA 12, "
              "jax[cuda12])")


def _arrays(npz: str) -> tuple:
    """(x_train, y_train, x_test, y_test) from the bench's npz, read as distmnist reads any MNIST file
    (dataset.read_npz: bounded, each array's size checked from its header, never unpickled); UserError otherwise."""
    from distmnist.data import dataset

    try:
        data = safeio.read_path(npz)
    except OSError as exc:
        raise UserError(f"cannot read --npz={npz}: {exc.strerror or exc}") from None
    arrays = dataset.read_npz(data, npz)
    return tuple(arrays[key] for key in dataset.KEYS)


def _jax_model(npz: str, replicas: int, learning_rate: float, seed: int, platform: str, precision: str):
    """JAX's side of the contest, set up: a namespace of the training set on the device(s) (features, targets,
    n), the test set (test_x, test_y), the parameters, the shardings, the rng (already used for the parameters),
    train_steps(params, features, targets, indices [steps, global batch]) -> (params, losses) as one jax.jit call
    of a lax.scan, and predict(params, x) -> classes; or {"skipped": why} where JAX (or its backend) is missing."""
    try:
        import jax
    except ImportError:
        return {"skipped": NOT_INSTALLED}
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # not its INFO line on the missing TPU
    try:
        devices = jax.devices(platform)[:replicas]
    except RuntimeError:  # "Unknown backend": JAX from PyPI has only its CPU backend unless asked for CUDA's
        return {"skipped": NO_BACKEND.format(platform=platform)}
    x_train, y_train, x_test, y_test = _arrays(npz)
    if len(devices) < replicas:
        raise SystemExit(f"distmnist.bench.solo: {replicas} {platform} devices wanted, JAX has {len(devices)}")
    mesh = Mesh(np.array(devices), ("batch",))
    replicated = NamedSharding(mesh, PartitionSpec())

    features = jax.device_put(x_train.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0, replicated)
    targets = jax.device_put(np.eye(LAYER_SIZES[-1], dtype=np.float32)[y_train], replicated)
    test_x = jax.device_put(x_test.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0, replicated)

    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]):
        limit = 1.0 / np.sqrt(fan_in)
        params += [rng.uniform(-limit, limit, [fan_in, fan_out]).astype(np.float32),
                   rng.uniform(-limit, limit, [fan_out]).astype(np.float32)]
    params = jax.device_put(params, replicated)

    low = {"float32": None, "mixed_bfloat16": jnp.bfloat16, "mixed_float16": jnp.float16}[precision]

    def forward(params, x):
        h = x if low is None else x.astype(low)  # mixed: the layers in the low type, parameters and loss float32
        for i in range(0, len(params), 2):
            w, b = (params[i], params[i + 1]) if low is None else (params[i].astype(low), params[i + 1].astype(low))
            h = h @ w + b
            if i + 2 < len(params):
                h = jax.nn.relu(h)
        return h.astype(jnp.float32)

    def loss_fn(params, x, y):
        return jnp.mean(jnp.mean(jnp.square(y - forward(params, x)), axis=-1))

    @jax.jit
    def train_steps(params, features, targets, indices):
        def one_step(params, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, features[batch], targets[batch])
            return [p - learning_rate * g for p, g in zip(params, grads)], loss
        return jax.lax.scan(one_step, params, indices)

    @jax.jit
    def predict(params, x):
        return jnp.argmax(forward(params, x), axis=-1)

    return types.SimpleNamespace(
        jax=jax, devices=devices, replicated=replicated, by_batch=NamedSharding(mesh, PartitionSpec(None, "batch")),
        features=features, targets=targets, n=len(x_train), test_x=test_x, test_y=y_test, params=params, rng=rng,
        train_steps=train_steps, predict=predict,
        facts={"jax_version": jax.__version__, "devices": [str(d) for d in devices]})


def jax_runner(npz: str, replicas: int, per_replica_batch_size: int, steps: int, learning_rate: float, seed: int,
               platform: str = "cpu", precision: str = "float32"):
    """(run, global batch, facts): run() trains `steps` more steps in one compiled call and returns (its seconds,
    the last loss) (the first call compiles); None, 0 and {"skipped": why} where JAX is not installed."""
    m = _jax_model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return None, 0, m
    global_batch = per_replica_batch_size * replicas
    epochs = -(-steps * global_batch // m.n)  # enough shuffled epochs for the steps
    order = np.concatenate([m.rng.permutation(m.n) for _ in range(epochs)])
    order = order[:steps * global_batch].reshape(steps, global_batch)
    indices = m.jax.device_put(order.astype(np.int32), m.by_batch)

    def run():
        start = time.perf_counter()
        m.params, losses = m.train_steps(m.params, m.features, m.targets, indices)
        m.jax.block_until_ready((m.params, losses))
        return time.perf_counter() - start, float(losses[-1])

    return run, global_batch, m.facts


def jax_race(npz: str, replicas: int, per_replica_batch_size: int, learning_rate: float, seed: int, platform: str,
             precision: str, target: float, max_epochs: int) -> dict:
    """Time to the target test accuracy, checked every epoch, as the bench's race times distmnist and Keras: from
    the first step (the first call compiles) to the check that reaches it. An epoch is one compiled call over a
    fresh permutation, the partial batch dropped."""
    m = _jax_model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return m
    global_batch = per_replica_batch_size * replicas
    steps = m.n // global_batch

    def epoch():
        order = m.rng.permutation(m.n)[:steps * global_batch].reshape(steps, global_batch)
        m.params, _ = m.train_steps(m.params, m.features, m.targets, m.jax.device_put(order.astype(np.int32),
                                                                                      m.by_batch))
        return float(np.mean(np.asarray(m.predict(m.params, m.test_x)) == m.test_y))

    return {**_race(epoch, target, max_epochs), **m.facts}


def _race(epoch, target: float, max_epochs: int) -> dict:
    """epoch() trains one epoch and returns the test accuracy: {"seconds" (None: not reached in max_epochs),
    "epochs", "accuracy", "epoch_seconds" (each epoch's, its check included)}."""
    start = last = time.perf_counter()
    laps = []
    for done in range(1, max_epochs + 1):
        accuracy = epoch()
        now = time.perf_counter()
        laps.append(now - last)
        last = now
        if accuracy >= target:
            break
    reached = accuracy >= target
    return {"seconds": last - start if reached else None, "epochs": done, "accuracy": accuracy, "epoch_seconds": laps}


def distmnist_race(npz: str, replicas: int, per_replica_batch_size: int, learning_rate: float, seed: int,
                   platform: str, precision: str, target: float, max_epochs: int,
                   jit_compile: Optional[bool] = None) -> dict:
    """Time to the target test accuracy with distmnist's trainer, as jax_race (trainer_race)."""
    trainer, devices = _distmnist_trainer(npz, replicas, platform, lambda steps_per_epoch: max_epochs * steps_per_epoch,
                                          batch_size=per_replica_batch_size, learning_rate=learning_rate, seed=seed,
                                          precision=precision, jit_compile=jit_compile)
    return {**trainer_race(trainer, target, max_epochs), "devices": devices}


def trainer_race(trainer, target: float, max_epochs: int) -> dict:
    """_race for a distmnist Trainer: its epochs (the partial batch dropped) in calls of its steps_per_loop, the
    whole test set evaluated after each."""
    from distmnist.training.controller import run_steps

    def epoch():
        run_steps(trainer, trainer.steps_per_epoch)
        return trainer.evaluate()[0]

    return _race(epoch, target, max_epochs)


def _distmnist_trainer(npz: str, replicas: int, platform: str, total_steps, **settings):
    """TensorFlow imported quietly, then (distmnist's Trainer on 1 device or N: logical CPUs, or GPUs, with MNIST
    from npz and these TrainerSettings; the devices). total_steps(steps per epoch): the steps it will train."""
    from distmnist.startup import tfquiet

    arrays = _arrays(npz)
    tfquiet.import_tensorflow()
    from distmnist.data.dataset import Mnist
    from distmnist.training.strategy import make_strategy
    from distmnist.training.trainer import Trainer, TrainerSettings

    if platform == "cpu":
        choice = make_strategy(num_gpus=0) if replicas == 1 else make_strategy(cpu_replicas=replicas)
    else:
        choice = make_strategy(num_gpus=replicas)
    mnist = Mnist(*arrays, source=npz)
    steps_per_epoch = len(mnist.x_train) // (settings["batch_size"] * replicas)
    trainer = Trainer(TrainerSettings(total_steps=total_steps(steps_per_epoch), **settings), choice.strategy, mnist)
    return trainer, list(choice.devices)


def distmnist_runner(npz: str, replicas: int, per_replica_batch_size: int, steps: int, learning_rate: float,
                     seed: int, platform: str = "cpu", turns: int = 1, precision: str = "float32",
                     jit_compile: Optional[bool] = None):
    """(run, global batch, facts): run() trains `steps` more steps with distmnist's default trainer and returns
    (its seconds, the last loss); it runs turns + 1 times (the first untimed)."""
    trainer, devices = _distmnist_trainer(npz, replicas, platform, lambda steps_per_epoch: (turns + 1) * steps,
                                          batch_size=per_replica_batch_size, learning_rate=learning_rate, seed=seed,
                                          precision=precision, jit_compile=jit_compile)
    from distmnist.training.controller import run_steps

    def run():
        start = time.perf_counter()
        losses = run_steps(trainer, steps)
        return time.perf_counter() - start, float(losses[-1])

    return run, trainer.global_batch_size, {"devices": devices}


def _torch_model(npz: str, replicas: int, learning_rate: float, seed: int, platform: str, precision: str):
    """PyTorch's side of the contest, as its users write it on a CPU: the same MLP, initialisation, MSE and SGD
    over the same resident data; mixed_bfloat16 under torch.autocast("cpu", dtype=torch.bfloat16) (its CPU
    matmuls go through oneDNN). A namespace of n, rng (already used for the parameters), step(batch indices) ->
    loss, accuracy() on the test set; or {"skipped": why} where PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return {"skipped": TORCH_NOT_INSTALLED}
    if replicas != 1 or platform != "cpu" or precision == "mixed_float16":
        raise SystemExit("distmnist.bench.solo: the PyTorch contender runs on one CPU, in float32 or mixed_bfloat16")
    x_train, y_train, x_test, y_test = _arrays(npz)
    features = torch.from_numpy(x_train.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0)
    targets = torch.from_numpy(np.eye(LAYER_SIZES[-1], dtype=np.float32)[y_train])
    test_x = torch.from_numpy(x_test.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0)
    test_y = torch.from_numpy(y_test.astype(np.int64))
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]):
        limit = 1.0 / np.sqrt(fan_in)
        params += [torch.tensor(rng.uniform(-limit, limit, [fan_in, fan_out]).astype(np.float32), requires_grad=True),
                   torch.tensor(rng.uniform(-limit, limit, [fan_out]).astype(np.float32), requires_grad=True)]
    low = precision == "mixed_bfloat16"

    def forward(h):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            for i in range(0, len(params), 2):
                h = h @ params[i] + params[i + 1]
                if i + 2 < len(params):
                    h = torch.relu(h)
        return h.float()

    def step(batch):
        loss = torch.mean(torch.square(targets[batch] - forward(features[batch])))
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(learning_rate * g)
        return loss

    def accuracy():
        with torch.no_grad():
            return float(torch.mean((torch.argmax(forward(test_x), dim=-1) == test_y).float()))

    return types.SimpleNamespace(n=len(x_train), rng=rng, step=step, accuracy=accuracy, facts={
        "torch_version": torch.__version__, "threads": torch.get_num_threads()}, torch=torch)


def torch_runner(npz: str, replicas: int, per_replica_batch_size: int, steps: int, learning_rate: float, seed: int,
                 platform: str = "cpu", precision: str = "float32"):
    """(run, global batch, facts): run() runs `steps` more steps of PyTorch's eager loop (_torch_model) over
    shuffled epochs and returns (its seconds, the last loss); None, 0 and {"skipped": why} where PyTorch is not
    installed."""
    m = _torch_model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return None, 0, m
    order = m.torch.from_numpy(np.concatenate([m.rng.permutation(m.n) for _ in range(
        -(-2 * steps * per_replica_batch_size // m.n))]))
    position = 0

    def run():
        nonlocal position
        start = time.perf_counter()
        for _ in range(steps):
            if position + per_replica_batch_size > len(order):
                position = 0
            loss = m.step(order[position:position + per_replica_batch_size])
            position += per_replica_batch_size
        final = float(loss.detach())
        return time.perf_counter() - start, final

    return run, per_replica_batch_size, m.facts


def torch_race(npz: str, replicas: int, per_replica_batch_size: int, learning_rate: float, seed: int, platform: str,
               precision: str, target: float, max_epochs: int) -> dict:
    """Time to the target test accuracy, as jax_race: each epoch a fresh permutation, the partial batch dropped."""
    m = _torch_model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return m
    steps = m.n // per_replica_batch_size

    def epoch():
        order = m.torch.from_numpy(m.rng.permutation(m.n))
        for i in range(steps):
            m.step(order[i * per_replica_batch_size:(i + 1) * per_replica_batch_size])
        return m.accuracy()

    return {**_race(epoch, target, max_epochs), **m.facts}


RUNNERS = {"jax": jax_runner, "distmnist": distmnist_runner, "torch": torch_runner}
RACES = {"jax": jax_race, "torch": torch_race, "distmnist": distmnist_race}


def _warmed(contender: str, npz: str, replicas: int, per_replica_batch_size: int, steps: int, learning_rate: float,
            seed: int, platform: str, turns: int = 1, precision: str = "float32", jit_compile=None):
    """The contender's (run, global batch, facts) after one untimed run of `steps` steps (compilation, caches);
    run is None where the contender is not installed."""
    kwargs = {"turns": turns, "precision": precision, "jit_compile": jit_compile} if contender == "distmnist" else \
        {"precision": precision}
    run, global_batch, facts = RUNNERS[contender](npz, replicas, per_replica_batch_size, steps, learning_rate, seed,
                                                  platform, **kwargs)
    if run is not None:
        run()
    return run, global_batch, facts


def measure(contender: str, npz: str, replicas: int, per_replica_batch_size: int, steps: int, learning_rate: float,
            seed: int, platform: str = "cpu", precision: str = "float32", jit_compile=None) -> dict:
    """One untimed run of `steps` steps (compilation, caches), then one timed."""
    run, global_batch, facts = _warmed(contender, npz, replicas, per_replica_batch_size, steps, learning_rate, seed,
                                       platform, precision=precision, jit_compile=jit_compile)
    if run is None:
        return facts
    return {**_timed(run, steps * global_batch), **facts}


def _timed(run, examples: int) -> dict:
    seconds, final_loss = run()
    return {"examples_per_sec": examples / seconds, "final_loss": final_loss}


def serve(contender: str, npz: str, replicas: int, per_replica_batch_size: int, steps: int, learning_rate: float,
          seed: int, platform: str = "cpu", turns: int = 1000) -> None:
    """Turn-taking: after one untimed run prints {"ready": ...}; then each line "go" on stdin runs `steps` steps
    and prints {"examples_per_sec": ...}, until stdin ends."""
    run, global_batch, facts = _warmed(contender, npz, replicas, per_replica_batch_size, steps, learning_rate, seed,
                                       platform, turns)
    if run is None:
        print(json.dumps(facts), flush=True)
        return
    print(json.dumps({"ready": True, **facts}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(json.dumps(_timed(run, steps * global_batch)), flush=True)


def profile(contender: str, npz: str, replicas: int, per_replica_batch_size: int, steps: int,
            learning_rate: float, seed: int, platform: str, logdir: str) -> dict:
    """One untimed run, then one run of `steps` steps under the contender's profiler, its trace written under
    logdir: {"seconds", "steps", "trace"} for xlaprofile.breakdown (the process needs XLA_FLAGS with
    xlaprofile.TRACE_FLAG: environment(..., kernels=True))."""
    from distmnist.bench import xlaprofile

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


def environment(contender: str, replicas: int, platform: str = "cpu", kernels: bool = False) -> dict:
    """The environment the contender needs: on CPUs, JAX's host platform split into `replicas` devices; JAX's
    XLA as JAX's users run it, without the options distmnist sets for TensorFlow's (xlaflags.py). With kernels,
    XLA records every kernel it runs for the profiler (xlaprofile.py)."""
    from distmnist.bench import xlaprofile
    from distmnist.startup import xlaflags

    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if contender == "jax":
        flags = xlaflags.as_the_user_set(flags)
    if kernels:
        flags = f"{flags} {xlaprofile.TRACE_FLAG}"
    if platform == "cpu":
        flags = f"{flags} --xla_force_host_platform_device_count={replicas}"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = platform
    return env


def define_flags() -> None:
    flags.DEFINE_enum("contender", None, ["jax", "distmnist", "torch"], "Which loop to time.")
    flags.DEFINE_string("npz", None, "MNIST's arrays (the bench writes them once for both contenders).")
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
    flags.DEFINE_float("target_accuracy", 0, "Instead of timing steps, the time to this test accuracy, checked "
                       "every epoch (0: off).")
    flags.DEFINE_integer("max_epochs", 15, "With --target_accuracy: give up after this many epochs.")
    flags.mark_flags_as_required(["contender", "npz"])


def main() -> None:
    f = flags.FLAGS
    common = (f.contender, f.npz, f.replicas, f.batch_size, f.steps, f.learning_rate, f.seed, f.platform)
    if f.target_accuracy:
        xla = {"jit_compile": f.jit_compile} if f.contender == "distmnist" else {}
        print(json.dumps(RACES[f.contender](f.npz, f.replicas, f.batch_size, f.learning_rate, f.seed, f.platform,
                                            f.precision, f.target_accuracy, f.max_epochs, **xla)), flush=True)
    elif f.serve:
        serve(*common, turns=f.serve)
    elif f.profile:
        print(json.dumps(profile(*common, logdir=f.profile)), flush=True)
    else:
        print(json.dumps(measure(*common, precision=f.precision, jit_compile=f.jit_compile)), flush=True)


if __name__ == "__main__":
    cli.run(main, prog="distmnist.bench.solo", define_flags=define_flags)

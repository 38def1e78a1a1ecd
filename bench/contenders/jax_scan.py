"""JAX, as its best users write it, in a process of its own (solo.py; no TensorFlow in it): the training set on
the device(s) in its training dtype (float32 features, one-hot targets); one jax.jit call runs `steps` steps in a
lax.scan with a static trip count, nothing checked inside; with N replicas the global batch is sharded over N
devices (CPU devices split by XLA_FLAGS before JAX starts, or GPUs) along the batch axis and the weights are
replicated (XLA's SPMD partitioner adds the all-reduce). The first call compiles for its length."""

import logging
import time
import types

import numpy as np

from bench import mnist_npz
from bench import timing as timing_lib
from distmnist.training import LAYER_SIZES  # without TensorFlow, which this process must not import

NOT_INSTALLED = "JAX is not installed (pip install -e '.[bench]' adds it)"
NO_BACKEND = "this JAX has no {platform} backend (pip install -e '.[bench-gpu]' adds JAX with CUDA 12, jax[cuda12])"


def model(npz: str, replicas: int, learning_rate: float, seed: int, platform: str, precision: str):
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
    x_train, y_train, x_test, y_test = mnist_npz.read(npz)
    if len(devices) < replicas:
        raise SystemExit(f"bench.solo: {replicas} {platform} devices wanted, JAX has {len(devices)}")
    mesh = Mesh(np.array(devices), ("batch",))
    replicated = NamedSharding(mesh, PartitionSpec())

    features = jax.device_put(x_train.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0, replicated)
    targets = jax.device_put(np.eye(LAYER_SIZES[-1], dtype=np.float32)[y_train], replicated)
    test_x = jax.device_put(x_test.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0, replicated)

    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(LAYER_SIZES[:-1], LAYER_SIZES[1:], strict=True):
        limit = 1.0 / np.sqrt(fan_in)
        params += [
            rng.uniform(-limit, limit, [fan_in, fan_out]).astype(np.float32),
            rng.uniform(-limit, limit, [fan_out]).astype(np.float32),
        ]
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
            return [p - learning_rate * g for p, g in zip(params, grads, strict=True)], loss

        return jax.lax.scan(one_step, params, indices)

    @jax.jit
    def predict(params, x):
        return jnp.argmax(forward(params, x), axis=-1)

    return types.SimpleNamespace(
        jax=jax,
        devices=devices,
        replicated=replicated,
        by_batch=NamedSharding(mesh, PartitionSpec(None, "batch")),
        features=features,
        targets=targets,
        n=len(x_train),
        test_x=test_x,
        test_y=y_test,
        params=params,
        rng=rng,
        train_steps=train_steps,
        predict=predict,
        facts={"jax_version": jax.__version__, "devices": [str(d) for d in devices]},
    )


def runner(
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    platform: str = "cpu",
    precision: str = "float32",
):
    """(run, global batch, facts): run() trains `steps` more steps in one compiled call and returns (its seconds,
    the last loss) (the first call compiles); None, 0 and {"skipped": why} where JAX is not installed."""
    m = model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return None, 0, m
    global_batch = per_replica_batch_size * replicas
    epochs = -(-steps * global_batch // m.n)  # enough shuffled epochs for the steps
    order = np.concatenate([m.rng.permutation(m.n) for _ in range(epochs)])
    order = order[: steps * global_batch].reshape(steps, global_batch)
    indices = m.jax.device_put(order.astype(np.int32), m.by_batch)

    def run():
        start = time.perf_counter()
        m.params, losses = m.train_steps(m.params, m.features, m.targets, indices)
        m.jax.block_until_ready((m.params, losses))
        return time.perf_counter() - start, float(losses[-1])

    return run, global_batch, m.facts


def race(
    npz: str,
    replicas: int,
    per_replica_batch_size: int,
    learning_rate: float,
    seed: int,
    platform: str,
    precision: str,
    target: float,
    max_epochs: int,
) -> dict:
    """Time to the target test accuracy, checked every epoch, as the bench's race times distmnist and Keras: from
    the first step (the first call compiles) to the check that reaches it. An epoch is one compiled call over a
    fresh permutation, the partial batch dropped."""
    m = model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return m
    global_batch = per_replica_batch_size * replicas
    steps = m.n // global_batch

    def epoch():
        order = m.rng.permutation(m.n)[: steps * global_batch].reshape(steps, global_batch)
        m.params, _ = m.train_steps(
            m.params, m.features, m.targets, m.jax.device_put(order.astype(np.int32), m.by_batch)
        )
        return float(np.mean(np.asarray(m.predict(m.params, m.test_x)) == m.test_y))

    return {**timing_lib.until_accuracy(epoch, target, max_epochs), **m.facts}

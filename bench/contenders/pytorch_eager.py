"""PyTorch, as its users write it on a CPU, in a process of its own (solo.py): the same MLP, initialisation, MSE
and SGD over the same resident data, an eager step over each batch's rows; mixed_bfloat16 under
torch.autocast("cpu", dtype=torch.bfloat16) (its CPU matmuls go through oneDNN). One CPU replica only."""

import time
import types

import numpy as np

from bench import mnist_npz
from bench import timing as timing_lib
from distmnist.training import LAYER_SIZES

NOT_INSTALLED = (
    "PyTorch is not installed (its CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def model(npz: str, replicas: int, learning_rate: float, seed: int, platform: str, precision: str):
    """A namespace of n, rng (already used for the parameters), step(batch indices) -> loss, accuracy() on the test
    set; or {"skipped": why} where PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return {"skipped": NOT_INSTALLED}
    if replicas != 1 or platform != "cpu" or precision == "mixed_float16":
        raise SystemExit("bench.solo: the PyTorch contender runs on one CPU, in float32 or mixed_bfloat16")
    x_train, y_train, x_test, y_test = mnist_npz.read(npz)
    features = torch.from_numpy(x_train.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0)
    targets = torch.from_numpy(np.eye(LAYER_SIZES[-1], dtype=np.float32)[y_train])
    test_x = torch.from_numpy(x_test.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0)
    test_y = torch.from_numpy(y_test.astype(np.int64))
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(LAYER_SIZES[:-1], LAYER_SIZES[1:], strict=True):
        limit = 1.0 / np.sqrt(fan_in)
        params += [
            torch.tensor(rng.uniform(-limit, limit, [fan_in, fan_out]).astype(np.float32), requires_grad=True),
            torch.tensor(rng.uniform(-limit, limit, [fan_out]).astype(np.float32), requires_grad=True),
        ]
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
            for p, g in zip(params, grads, strict=True):
                p.sub_(learning_rate * g)
        return loss

    def accuracy():
        with torch.no_grad():
            return float(torch.mean((torch.argmax(forward(test_x), dim=-1) == test_y).float()))

    return types.SimpleNamespace(
        n=len(x_train),
        rng=rng,
        step=step,
        accuracy=accuracy,
        facts={"torch_version": torch.__version__, "threads": torch.get_num_threads()},
        torch=torch,
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
    """(run, global batch, facts): run() runs `steps` more steps of PyTorch's eager loop over shuffled epochs and
    returns (its seconds, the last loss); None, 0 and {"skipped": why} where PyTorch is not installed."""
    m = model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return None, 0, m
    order = m.torch.from_numpy(
        np.concatenate([m.rng.permutation(m.n) for _ in range(-(-2 * steps * per_replica_batch_size // m.n))])
    )
    position = 0

    def run():
        nonlocal position
        start = time.perf_counter()
        for _ in range(steps):
            if position + per_replica_batch_size > len(order):
                position = 0
            loss = m.step(order[position : position + per_replica_batch_size])
            position += per_replica_batch_size
        final = float(loss.detach())
        return time.perf_counter() - start, final

    return run, per_replica_batch_size, m.facts


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
    """Time to the target test accuracy, as jax_scan.race: each epoch a fresh permutation, the partial batch
    dropped."""
    m = model(npz, replicas, learning_rate, seed, platform, precision)
    if isinstance(m, dict):
        return m
    steps = m.n // per_replica_batch_size

    def epoch():
        order = m.torch.from_numpy(m.rng.permutation(m.n))
        for i in range(steps):
            m.step(order[i * per_replica_batch_size : (i + 1) * per_replica_batch_size])
        return m.accuracy()

    return {**timing_lib.until_accuracy(epoch, target, max_epochs), **m.facts}

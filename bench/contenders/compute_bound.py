"""The compute bound: the best FLOP/s of large float32 matmuls on a device, over the FLOPs of one training example.
No way of training this MLP can beat it."""

import time

import tensorflow as tf

FLOP_PER_EXAMPLE = 2.41e6  # forward 1.07 + backward 1.34 MFLOP for 784-512-256-10


@tf.function
def _repeated_matmul(a, b, n):
    total = tf.zeros([])
    for _ in tf.range(n):
        total += tf.matmul(a, b)[0, 0]
    return total


def flops_per_sec(device: str, sizes=(2048, 3072), min_seconds: float = 0.5) -> float:
    """The best FLOP/s of large float32 matmuls on the device: the ceiling for any way of training this MLP.

    Each size is timed over at least min_seconds of work: a first guess of the repeats (about a second on a
    2-core CPU, milliseconds on a GPU) is scaled up until the timing is that long.
    """
    best = 0.0
    with tf.device(device):
        for size in sizes:
            a = tf.random.uniform([size, size])
            b = tf.random.uniform([size, size])
            repeats = max(1, int(8e10 // (2 * size**3)))
            float(_repeated_matmul(a, b, tf.constant(1)))
            while True:
                start = time.perf_counter()
                float(_repeated_matmul(a, b, tf.constant(repeats)))
                seconds = time.perf_counter() - start
                if seconds >= min_seconds:
                    break
                repeats = int(repeats * min(100.0, 1.2 * min_seconds / max(seconds, 1e-6))) + 1
            best = max(best, 2.0 * size**3 * repeats / seconds)
    return best


def examples_per_sec(device: str, **sizes) -> float:
    """The bound in examples per second: flops_per_sec over FLOP_PER_EXAMPLE."""
    return flops_per_sec(device, **sizes) / FLOP_PER_EXAMPLE

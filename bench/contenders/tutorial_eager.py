"""The tutorial as written: raw variables, an eager GradientTape loop over tf.data, assign_sub updates."""

import tensorflow as tf

from bench import timing as timing_lib
from distmnist.data.dataset import Mnist
from distmnist.training import LAYER_SIZES, inputs


def examples_per_sec(mnist: Mnist, device: str, timing: timing_lib.Timing) -> float:
    """The tutorial's loop on one device, with its own initialisation (truncated normal, stddev 0.1)."""
    with tf.device(device):
        sizes = LAYER_SIZES
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            params.append(tf.Variable(tf.random.truncated_normal([fan_in, fan_out], stddev=0.1)))
            params.append(tf.Variable(tf.zeros([fan_out])))
        dataset = inputs.tfdata_pipeline(
            mnist.x_train, mnist.y_train, timing.per_replica_batch_size, 10000, timing.seed
        )
        batches = iter(dataset)

        def step():
            x, y = next(batches)
            with tf.GradientTape() as tape:
                h1 = tf.nn.relu(x @ params[0] + params[1])
                h2 = tf.nn.relu(h1 @ params[2] + params[3])
                out = h2 @ params[4] + params[5]
                loss = tf.reduce_mean(tf.square(y - out))
            grads = tape.gradient(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.assign_sub(timing.learning_rate * g)
            return loss

        def run_steps(n):
            for _ in range(n - 1):
                step()
            float(step())  # wait for the last step

        return timing_lib.examples_per_sec(run_steps, timing, timing.per_replica_batch_size)

"""The replica step's maths as pure functions: the loss, the gradients with their finiteness, the SGD update.

No strategy here: these run inside one replica (and XLA can compile them); the trainer sums the gradients
across replicas and applies the update to every replica's copy of the weights.
"""

from typing import Callable

import tensorflow as tf

from distmnist.training.model import forward


def mse_loss(targets: tf.Tensor, outputs: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """This replica's share of the global batch's mean squared error (summed over replicas it is the mean).

    tf.nn.compute_average_loss's arithmetic without its Assert, which checks a Python constant in every step and,
    on a GPU, copies its condition to the host to do so.
    """
    per_example = tf.reduce_mean(tf.square(targets - outputs), axis=-1)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example), tf.constant(global_batch_size, per_example.dtype))


def gradients(weights, features: tf.Tensor, targets: tf.Tensor, global_batch_size: int,
              loss_fn: Callable = mse_loss):
    """Returns (the loss's gradients for each weight, this replica's loss)."""
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = loss_fn(targets, forward(weights, features), global_batch_size)
    return tape.gradient(loss, weights), loss


def all_finite(loss: tf.Tensor, grads) -> tf.Tensor:
    """Whether the loss and every gradient are finite: a NaN or inf anywhere makes the sum of everything
    non-finite, one reduction per tensor, no per-element flags."""
    return tf.math.is_finite(loss + tf.add_n([tf.reduce_sum(g) for g in grads]))


def finite_weights(variables) -> tf.Tensor:
    """Whether every weight is finite. Once a weight is NaN or inf no SGD step makes it finite again, so after a
    run of steps this says whether any of them applied a non-finite update."""
    return tf.math.is_finite(tf.add_n([tf.reduce_sum(v) for v in variables]))


def sgd(variable: tf.Variable, grad: tf.Tensor, learning_rate: tf.Tensor, apply: tf.Tensor):
    """Plain SGD on one weight, where `apply` (a boolean scalar) says so: a select, not a branch (nothing for
    the host to wait on). The select picks the step or zero, so a non-finite gradient that is not applied leaves
    the weight as it was; one op more than plain SGD outside XLA, none inside (fused)."""
    return variable.assign_sub(tf.where(apply, learning_rate * grad, 0.0))


def sgd_all(variables, grads, learning_rate: tf.Tensor, apply: tf.Tensor) -> None:
    """sgd on every weight of one replica's copy of the model: under XLA one launch a replica, not three ops a
    weight that wait for the intra-op threads another replica's step holds."""
    for variable, grad in zip(variables, grads):
        sgd(variable, grad, learning_rate, apply)


def assign_all(variables, values) -> None:
    """Every weight of one replica's copy of the model set to the given values."""
    for variable, value in zip(variables, values):
        variable.assign(value)

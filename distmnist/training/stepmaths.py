"""The replica step's maths as pure functions: the loss, the gradients with their finiteness, the SGD update.

No strategy here: these run inside one replica (and XLA can compile them); the trainer sums the gradients
across replicas and applies the update to every replica's copy of the weights.
"""

from collections.abc import Callable, Sequence

import tensorflow as tf

from distmnist.training import hostthreads
from distmnist.training.model import forward

# loss_fn(targets, outputs, global_batch_size): this replica's share of the global batch's loss (mse_loss's form).
LossFn = Callable[[tf.Tensor, tf.Tensor, int], tf.Tensor]


def mse_loss(targets: tf.Tensor, outputs: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """This replica's share of the global batch's mean squared error (summed over replicas it is the mean).

    tf.nn.compute_average_loss's arithmetic without its Assert, which checks a Python constant in every step and,
    on a GPU, copies its condition to the host to do so.
    """
    per_example = tf.reduce_mean(tf.square(targets - outputs), axis=-1)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example), tf.constant(global_batch_size, per_example.dtype))


def gradients(
    weights: Sequence[tf.Tensor],
    features: tf.Tensor,
    targets: tf.Tensor,
    global_batch_size: int,
    loss_fn: LossFn = mse_loss,
    compute_dtype: tf.DType = tf.float32,
    loss_scale: tf.Tensor | None = None,
    streams: int = 1,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Returns (the loss's gradients for each weight, this replica's loss), both float32.

    compute_dtype: the forward pass's type (model.forward); the loss is float32 whatever it is. loss_scale (float16):
    the gradients are taken of loss x loss_scale, so that small ones do not flush to zero in float16, and divided by
    it again in float32; an overflow shows as a non-finite gradient (all_finite), the loss itself unscaled.

    The weights are cast to compute_dtype once and the gradients taken of those copies, then cast to float32.
    streams > 1 (a low compute_dtype only, as the Trainer checks: hostthreads.py): the batch's rows in that many
    parts, each its own chain of forward and backward ops that TensorFlow's executor runs beside the others, their
    gradients summed in float32."""
    low = [tf.cast(w, compute_dtype) for w in weights]  # float32: the weights themselves
    rows = hostthreads.part_sizes(int(features.shape[0]), streams)
    batches = (
        zip(tf.split(features, rows), tf.split(targets, rows), strict=True) if streams > 1 else [(features, targets)]
    )
    parts = []
    for part_features, part_targets in batches:
        with tf.GradientTape() as tape:
            tape.watch(low)
            part_loss = loss_fn(part_targets, forward(low, part_features, compute_dtype), global_batch_size)
            scaled = part_loss if loss_scale is None else part_loss * loss_scale
        parts.append((part_loss, [tf.cast(g, tf.float32) for g in tape.gradient(scaled, low)]))
    if len(parts) == 1:
        loss, grads = parts[0]
    else:
        loss = tf.add_n([part_loss for part_loss, _ in parts])
        grads = [tf.add_n(list(each)) for each in zip(*(part_grads for _, part_grads in parts), strict=True)]
    if loss_scale is not None:
        grads = [g / loss_scale for g in grads]
    return grads, loss


def all_finite(loss: tf.Tensor, grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """Whether the loss and every gradient are finite: a NaN or inf anywhere makes the sum of everything
    non-finite, one reduction per tensor, no per-element flags."""
    return tf.math.is_finite(loss + tf.add_n([tf.reduce_sum(g) for g in grads]))


def finite_weights(variables: Sequence[tf.Variable]) -> tf.Tensor:
    """Whether every weight is finite. Once a weight is NaN or inf no SGD step makes it finite again, so after a
    run of steps this says whether any of them applied a non-finite update."""
    return tf.math.is_finite(tf.add_n([tf.reduce_sum(v) for v in variables]))


def sgd(variable: tf.Variable, grad: tf.Tensor, learning_rate: tf.Tensor, apply: tf.Tensor) -> tf.Variable:
    """Plain SGD on one weight, where `apply` (a boolean scalar) says so: a select, not a branch (nothing for
    the host to wait on). The select picks the step or zero, so a non-finite gradient that is not applied leaves
    the weight as it was; one op more than plain SGD outside XLA, none inside (fused)."""
    return variable.assign_sub(tf.where(apply, learning_rate * grad, 0.0))


def sgd_all(
    variables: Sequence[tf.Variable], grads: Sequence[tf.Tensor], learning_rate: tf.Tensor, apply: tf.Tensor
) -> None:
    """sgd on every weight of one replica's copy of the model: under XLA one launch a replica, not three ops a
    weight that wait for the intra-op threads another replica's step holds."""
    for variable, grad in zip(variables, grads, strict=True):
        sgd(variable, grad, learning_rate, apply)


def sgd_every_step(variables: Sequence[tf.Variable], grads: Sequence[tf.Tensor], learning_rate: tf.Tensor) -> None:
    """Plain SGD on every weight of one replica's copy of the model, for a call whose every step applies (the lean
    graph call): one ResourceApplyGradientDescent a weight, var -= learning_rate * grad, where sgd_all runs three
    ops (the product, the select, the subtraction). The same product and subtraction, so the same numbers."""
    for variable, grad in zip(variables, grads, strict=True):
        tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=learning_rate, delta=grad)


def update_loss_scale(variables: Sequence[tf.Variable], values: Sequence[tf.Tensor], growth_steps: float) -> None:
    """Dynamic loss scaling's state after one step, on one replica's copy of [scale, good_steps, skipped,
    skipped_at_1]; values: [[active, overflowed]] (1.0 or 0.0, the same on every replica: the overflow count is
    all-reduced). An active step whose gradients overflowed was skipped: the scale halves (not below 1) and the run
    of good steps starts again; growth_steps good steps in a row double it (as Keras's LossScaleOptimizer).
    skipped_at_1 counts the steps skipped in a row at scale 1, where halving cannot help (a good step resets it)."""
    scale, good, skipped, skipped_at_1 = variables
    active, overflowed = values[0][0] > 0.0, values[0][1] > 0.0
    skip = tf.logical_and(active, overflowed)
    grow = tf.logical_and(tf.logical_and(active, tf.logical_not(overflowed)), good + 1.0 >= growth_steps)
    skipped_at_1.assign(
        tf.where(active, tf.where(tf.logical_and(skip, scale <= 1.0), skipped_at_1 + 1.0, 0.0), skipped_at_1)
    )
    scale.assign(tf.where(skip, tf.maximum(scale * 0.5, 1.0), tf.where(grow, scale * 2.0, scale)))
    good.assign(tf.where(tf.logical_or(skip, grow), 0.0, tf.where(active, good + 1.0, good)))
    skipped.assign_add(tf.where(skip, 1.0, 0.0))


def assign_all(variables: Sequence[tf.Variable], values: Sequence[tf.Tensor]) -> None:
    """Every weight of one replica's copy of the model set to the given values."""
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)

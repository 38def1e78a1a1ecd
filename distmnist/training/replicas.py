"""Updating every replica's copy of a set of variables at once, from cross-replica context (the trainer's SGD and
loss-scale updates, the agreement's taking of replica 0's state)."""

from collections.abc import Callable, Sequence

import tensorflow as tf

# update(variables, values): one replica's copies of the target variables and that replica's values.
Update = Callable[[list[tf.Variable], list[tf.Tensor]], None]


def on_each_copy(
    strategy: tf.distribute.Strategy,
    targets: Sequence[tf.Variable],
    values: Sequence[tf.distribute.DistributedValues],
    update: Update,
) -> None:
    """update(variables, values) with each replica's copies of the target variables and its values, on its own
    device (as strategy.extended.update places one variable's update); cross-replica context."""
    local = strategy.experimental_local_results
    copies = zip(*(local(v) for v in targets), strict=True)
    replica_values = zip(*(local(x) for x in values), strict=True)
    for variables, replica_value in zip(copies, replica_values, strict=True):
        with tf.device(variables[0].device):
            update(list(variables), list(replica_value))


def update_copies(
    targets: Sequence[tf.Variable],
    strategy: tf.distribute.Strategy,
    values: Sequence[tf.distribute.DistributedValues],
    update: Update,
) -> None:
    """The merge_call target: update(variables, values) on every replica's copy of the target variables with
    that replica's values, all of them in one call. Bind `targets` and `update` beforehand (functools.partial):
    merge_call would treat its arguments as per-replica data."""
    on_each_copy(strategy, targets, values, update)

"""Updating every replica's copy of a set of variables at once, from cross-replica context (the trainer's SGD and
loss-scale updates, the agreement's taking of replica 0's state)."""

import tensorflow as tf


def on_each_copy(strategy: tf.distribute.Strategy, targets, values, update) -> None:
    """update(variables, values) with each replica's copies of the target variables and its values, on its own
    device (as strategy.extended.update places one variable's update); cross-replica context."""
    local = strategy.experimental_local_results
    copies = zip(*(local(v) for v in targets), strict=True)
    replica_values = zip(*(local(x) for x in values), strict=True)
    for variables, replica_value in zip(copies, replica_values, strict=True):
        with tf.device(variables[0].device):
            update(list(variables), list(replica_value))


def update_copies(targets, strategy, values, update) -> None:
    """The merge_call target: update(variables, values) on every replica's copy of the target variables with
    that replica's values, all of them in one call. Bind `targets` and `update` beforehand (functools.partial):
    merge_call would treat its arguments as per-replica data."""
    on_each_copy(strategy, targets, values, update)

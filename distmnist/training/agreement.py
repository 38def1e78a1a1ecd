"""The agreement between a cluster's workers: whether any of them asks to stop, and every worker taking the chief's
state. Each call is a collective: every worker makes it at the same point (the run makes them only in a cluster)."""

import functools
from collections.abc import Sequence

import tensorflow as tf

from distmnist.training import replicas, stepmaths


class Agreement:
    """The collectives over `state` (the trainer's: weights and loss-scale state) under its strategy."""

    def __init__(self, strategy: tf.distribute.Strategy, state: Sequence[tf.Variable]) -> None:
        self.strategy = strategy
        self._state = state
        self._any_replica = tf.function(self._any_replica_fn, autograph=False)  # traced only in a cluster
        self._from_replica_0 = tf.function(self._from_replica_0_fn, autograph=False)

    def _any_replica_fn(self, flag: tf.Tensor) -> tf.Tensor:
        summed = self.strategy.run(  # tf.identity puts the host's flag on the replica's device
            lambda f: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(f)),
            args=(flag,),
        )
        return self.strategy.experimental_local_results(summed)[0]

    def _from_replica_0_fn(self, at_step: tf.Tensor) -> tf.Tensor:
        """Every replica takes replica 0's weights and step: a sum in which every other replica adds zeros (the
        step in float64, exact far beyond any run's length; GPUs do not all-reduce integers)."""

        def replica(at_step: tf.Tensor) -> tf.Tensor:
            ctx = tf.distribute.get_replica_context()
            keep = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)
            state = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.convert_to_tensor(v) * keep for v in self._state])
            at_step = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(at_step) * tf.cast(keep, tf.float64))
            ctx.merge_call(
                functools.partial(replicas.update_copies, self._state, update=stepmaths.assign_all), args=(state,)
            )
            return at_step

        return self.strategy.experimental_local_results(self.strategy.run(replica, args=(at_step,)))[0]

    def any_replica(self, flag: bool) -> bool:
        """Whether flag is true on any worker. A collective: every worker calls it at the same point."""
        return float(self._any_replica(tf.constant(float(flag)))) > 0

    def adopt_replica_0(self, step: int) -> int:
        """Gives every worker the chief's weights and step (a resumed multi-worker run restores on the chief
        only); returns the step. A collective, like any_replica."""
        return int(self._from_replica_0(tf.constant(step, tf.float64)))

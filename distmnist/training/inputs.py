"""Feeding the training step: the order of examples, the tutorial's tf.data pipeline, and device-resident data.

Both input paths draw the same example order from the seed: tf.data's shuffle with the tutorial's buffer,
reshuffled each epoch. The order is the same whatever the elements are, so shuffling indices gives exactly the
order in which `from_tensor_slices((x, y)).shuffle(...)` delivers images. Each epoch's last partial global
batch is dropped, so every step sees a full global batch and the loss scaling is exact.
"""

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from distmnist.training.model import images_to_features, labels_to_targets

MAX_EPOCHS_AHEAD = 16  # epoch orders drawn ahead (0.5 MB each for MNIST)


def _shuffled(dataset: tf.data.Dataset, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    return dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)


_UNTUNED = tf.data.Options()
# The orders' pipeline has nothing to tune (its prefetch is fixed): without tf.data's autotuning there is no
# model thread beside the training, and an iterator is deleted at once (with autotuning, its deletion waits for
# that thread).
_UNTUNED.autotune.enabled = False


class EpochOrder:
    """Yields each epoch's order of training-example indices, int64 [n], in sequence from epoch 0.

    An epoch's order costs tf.data's shuffle a noticeable share of a core (docs/performance.md has the figure). A
    background thread draws up to MAX_EPOCHS_AHEAD epochs before they are asked for: made before the training
    call is traced and compiled (one busy core), the orders of a short run are drawn on the idle one, not while
    training. It draws no further than the run's `epochs` (without them, one ahead): a prefetch keeps its buffer
    full, so without that bound every epoch the run takes would start the shuffle of one it never uses, on a core
    the training needs. Past them, each order is drawn when asked for (the same orders: the sequence is drawn
    again and the first `epochs` dropped).
    """

    def __init__(self, num_examples: int, shuffle_buffer: int, seed: int, epochs: int | None = None):
        # A new dataset draws the sequence from its start: iterators of one dataset share its shuffle's seeds.
        self._sequence = lambda: (
            _shuffled(tf.data.Dataset.range(num_examples), shuffle_buffer, seed)
            .batch(num_examples)
            .repeat()
            .with_options(_UNTUNED)
        )
        self._bound = epochs
        ahead = min(MAX_EPOCHS_AHEAD, epochs) if epochs else 1
        self._epochs = iter((self._sequence() if epochs is None else self._sequence().take(epochs)).prefetch(ahead))
        self._later: Iterator[tf.Tensor] | None = None  # the orders past `epochs`, drawn on demand

    def next_epoch(self) -> np.ndarray:
        if self._later is None:
            try:
                return next(self._epochs).numpy()
            except StopIteration:
                self._later = iter(self._sequence().skip(self._bound))
        return next(self._later).numpy()


def preprocess(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The tutorial's map: uint8 images and integer labels -> float features [N, 784], one-hot targets [N, 10]."""
    return images_to_features(images), labels_to_targets(labels)


def tfdata_pipeline(
    x: np.ndarray,
    y: np.ndarray,
    global_batch_size: int,
    shuffle_buffer: int,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    """The tutorial's pipeline, repeated forever: shuffle -> batch(global) -> map(preprocess) -> prefetch.

    With an input_context (tf.distribute calls it once per worker), each global batch is cut into this
    worker's per-replica batches, in the order of its replicas: replica r trains on the r-th slice of every
    global batch, on any number of workers, as in the device-resident path.
    """
    dataset = _shuffled(tf.data.Dataset.from_tensor_slices((x, y)), shuffle_buffer, seed)
    # Repeat before skipping, so a resumed run skips whole epochs' reshuffles exactly as they were drawn.
    dataset = dataset.batch(global_batch_size, drop_remainder=True).repeat().skip(start_step)
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        local_replicas = replicas // input_context.num_input_pipelines
        per_replica = global_batch_size // replicas
        first = input_context.input_pipeline_id * local_replicas * per_replica
        size = local_replicas * per_replica

        @tf.autograph.experimental.do_not_convert  # plain tensor ops: nothing for AutoGraph to convert
        def split(images: tf.Tensor, labels: tf.Tensor) -> tf.data.Dataset:
            return tf.data.Dataset.from_tensor_slices(
                (
                    tf.reshape(images[first : first + size], [local_replicas, per_replica, 28, 28]),
                    tf.reshape(labels[first : first + size], [local_replicas, per_replica]),
                )
            )

        # flat_map hides that the stream never ends; said again, tf.distribute skips the check that every worker
        # still has data, an int64 all-reduce in every step (and a SplitV that GPUs have no int64 kernel for).
        dataset = dataset.flat_map(split).apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def on_each_replica(
    strategy: tf.distribute.Strategy, value_fn: Callable[[int, int], np.ndarray | tf.Tensor]
) -> tf.distribute.DistributedValues:
    """value_fn(replica_id, num_replicas) (a numpy array or a tensor), made on each replica's own device once.

    value_fn runs under that replica's device scope, so what it computes runs there too. TensorFlow calls the
    function with no device scope of its own: without this every replica's copy would sit on the first device.
    """
    devices = strategy.extended.worker_devices  # this worker's replicas, in order

    def place(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
        with tf.device(devices[ctx.replica_id_in_sync_group % len(devices)]):
            return tf.identity(value_fn(ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync))

    return strategy.experimental_distribute_values_from_function(place)


def shard_bounds(num_examples: int, replica_id: int, num_replicas: int) -> tuple[int, int]:
    """Rows [lo, hi) of an evaluation set that a replica owns: a partition, every row exactly once."""
    return num_examples * replica_id // num_replicas, num_examples * (replica_id + 1) // num_replicas


def replica_call_indices(
    epoch_order: Callable[[int], np.ndarray],
    first_step: int,
    count: int,
    steps_per_loop: int,
    steps_per_epoch: int,
    num_replicas: int,
    per_replica_batch_size: int,
    replica_id: int,
) -> np.ndarray:
    """The indices that one replica trains on at each step of a call: int64 [steps_per_loop, batch] for global
    steps first_step .. first_step + count - 1, across epoch ends; rows past `count` are zeros (the call masks
    those steps). epoch_order(e) is epoch e's order of example indices. Int64, as int32 tensors on a GPU live in
    host memory and would be copied to the device every step.

    Replica r takes the r-th contiguous slice of each global batch, as tf.distribute splits a tf.data batch.
    """
    rows = np.zeros([steps_per_loop, per_replica_batch_size], np.int64)
    global_batch = num_replicas * per_replica_batch_size
    for row, step in enumerate(range(first_step, first_step + count)):
        at = (step % steps_per_epoch) * global_batch + replica_id * per_replica_batch_size
        rows[row] = epoch_order(step // steps_per_epoch)[at : at + per_replica_batch_size]
    return rows


class DeviceInput:
    """The training set resident on every replica's device, in its training dtype: features [N, 784] in the
    layers' type (float32, or a mixed precision's low type: the forward pass casts them to it first, so a gather of
    the cast features is the same batch, at half the bytes and one op a step fewer) and float32 one-hot targets
    [N, 10], made once on each replica's own device (GatherV2 has GPU kernels for those types, none for uint8).
    Each call gets its steps' rows as int64 indices, [steps_per_loop, batch] per replica (int32 tensors on a GPU
    live in host memory), the epochs' orders drawn from the seed as tf.data's shuffle draws them; a call runs
    across an epoch's end."""

    xla_whole_call = True  # plain tensors in, so XLA can compile the whole multi-step call
    static_trip_count = True  # every call runs steps_per_loop iterations and masks those past its count
    replayable = True  # call_args(step, count) gives the same batches every time: a call can run again

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        x: np.ndarray,
        y: np.ndarray,
        steps_per_epoch: int,
        per_replica_batch_size: int,
        steps_per_loop: int,
        shuffle_buffer: int,
        seed: int,
        epochs: int | None = None,
        dtype: tf.DType = tf.float32,
    ):
        self.strategy = strategy
        self.steps_per_epoch = steps_per_epoch
        self.per_replica_batch_size = per_replica_batch_size
        self.steps_per_loop = steps_per_loop
        self._new_order = lambda: EpochOrder(len(x), shuffle_buffer, seed, epochs)
        self._order = self._new_order()
        self._orders: dict[int, np.ndarray] = {}  # epoch -> order, for the epochs the current call needs
        self._next_epoch = 0  # the epoch self._order draws next
        self.features = on_each_replica(strategy, lambda r, n: tf.cast(images_to_features(x), dtype))
        self.targets = on_each_replica(strategy, lambda r, n: labels_to_targets(y))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        while self._next_epoch <= epoch:
            self._orders[self._next_epoch] = self._order.next_epoch()
            self._next_epoch += 1
        return self._orders[epoch]

    def seek(self, step: int) -> None:
        """Puts the input where an uninterrupted run is after `step` steps (the epochs before drawn and dropped)."""
        self._order, self._orders = self._new_order(), {}
        for _ in range(step // self.steps_per_epoch):
            self._order.next_epoch()
        self._next_epoch = step // self.steps_per_epoch

    def call_args(self, first_step: int, count: int) -> tuple:
        """What the compiled multi-step call takes, for `count` steps from global step first_step."""
        first_epoch = first_step // self.steps_per_epoch
        for epoch in [e for e in self._orders if e < first_epoch]:
            del self._orders[epoch]  # epochs behind the run are not needed again
        indices = on_each_replica(
            self.strategy,
            lambda r, n: replica_call_indices(
                self._epoch_order,
                first_step,
                count,
                self.steps_per_loop,
                self.steps_per_epoch,
                n,
                self.per_replica_batch_size,
                r,
            ),
        )
        return self.features, self.targets, indices

    def traced_args(self) -> tuple:
        """Arguments of the call's shape and placement, for tracing it without drawing an epoch's order."""
        shape = (self.steps_per_loop, self.per_replica_batch_size)
        return self.features, self.targets, on_each_replica(self.strategy, lambda r, n: np.zeros(shape, np.int64))

    @staticmethod
    def step_args(call_args: tuple, i: tf.Tensor) -> tuple:
        """strategy.run's arguments for the call's i-th step (cross-replica context, inside the call)."""
        features, targets, indices = call_args
        return features, targets, indices, i

    @staticmethod
    def batch(features: tf.Tensor, targets: tf.Tensor, indices: tf.Tensor, i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One replica's (features, targets) for a step: a gather, not a slice, so XLA keeps the step dynamic."""
        rows = tf.gather(indices, i)
        return tf.gather(features, rows), tf.gather(targets, rows)


class TfdataInput:
    """The tutorial's tf.data pipeline, distributed with distribute_datasets_from_function: each worker cuts its
    replicas' slices out of every global batch."""

    xla_whole_call = False  # XLA cannot hold a tf.data iterator
    static_trip_count = False  # a masked step would still take a batch from the iterator
    replayable = False  # the iterator has moved on

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        x: np.ndarray,
        y: np.ndarray,
        global_batch_size: int,
        shuffle_buffer: int,
        seed: int,
    ):
        self.strategy = strategy
        self._make = lambda start_step: iter(
            strategy.distribute_datasets_from_function(
                lambda context: tfdata_pipeline(x, y, global_batch_size, shuffle_buffer, seed, context, start_step)
            )
        )
        self.iterator = self._make(0)

    def seek(self, step: int) -> None:
        self.iterator = self._make(step)

    def call_args(self, first_step: int, count: int) -> tuple:
        return (self.iterator,)

    def traced_args(self) -> tuple:
        return (self.iterator,)

    @staticmethod
    def step_args(call_args: tuple, i: tf.Tensor) -> tuple:
        return next(call_args[0])

    @staticmethod
    def batch(features: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return features, targets

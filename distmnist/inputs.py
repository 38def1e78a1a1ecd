"""Feeding the training step: the order of examples, the tutorial's tf.data pipeline, and device-resident data.

Both input paths draw the same example order from the seed: tf.data's shuffle with the tutorial's buffer,
reshuffled each epoch. The order is the same whatever the elements are, so shuffling indices gives exactly the
order in which `from_tensor_slices((x, y)).shuffle(...)` delivers images. Each epoch's last partial global
batch is dropped, so every step sees a full global batch and the loss scaling is exact.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from distmnist.model import images_to_features, labels_to_targets


def _shuffled(dataset: tf.data.Dataset, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    return dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)


class EpochOrder:
    """Yields each epoch's order of training-example indices, int64 [n], in sequence from epoch 0."""

    def __init__(self, num_examples: int, shuffle_buffer: int, seed: int):
        indices = _shuffled(tf.data.Dataset.range(num_examples), shuffle_buffer, seed)
        self._epochs = iter(indices.batch(num_examples).repeat())

    def next_epoch(self) -> np.ndarray:
        return next(self._epochs).numpy()


def preprocess(images: tf.Tensor, labels: tf.Tensor):
    """The tutorial's map: uint8 images and integer labels -> float features [N, 784], one-hot targets [N, 10]."""
    return images_to_features(images), labels_to_targets(labels)


def tfdata_pipeline(x: np.ndarray, y: np.ndarray, global_batch_size: int, shuffle_buffer: int, seed: int,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    start_step: int = 0) -> tf.data.Dataset:
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
        def split(images, labels):
            return tf.data.Dataset.from_tensor_slices((
                tf.reshape(images[first:first + size], [local_replicas, per_replica, 28, 28]),
                tf.reshape(labels[first:first + size], [local_replicas, per_replica])))

        # flat_map hides that the stream never ends; said again, tf.distribute skips the check that every worker
        # still has data, an int64 all-reduce in every step (and a SplitV that GPUs have no int64 kernel for).
        dataset = dataset.flat_map(split).apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def on_each_replica(strategy: tf.distribute.Strategy, value_fn):
    """value_fn(replica_id, num_replicas) (a numpy array or a tensor), made on each replica's own device once.

    value_fn runs under that replica's device scope, so what it computes runs there too. TensorFlow calls the
    function with no device scope of its own: without this every replica's copy would sit on the first device.
    """
    devices = strategy.extended.worker_devices  # this worker's replicas, in order

    def place(ctx):
        with tf.device(devices[ctx.replica_id_in_sync_group % len(devices)]):
            return tf.identity(value_fn(ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync))
    return strategy.experimental_distribute_values_from_function(place)


def shard_bounds(num_examples: int, replica_id: int, num_replicas: int):
    """Rows [lo, hi) of an evaluation set that a replica owns: a partition, every row exactly once."""
    return num_examples * replica_id // num_replicas, num_examples * (replica_id + 1) // num_replicas


def replica_batch_indices(order: np.ndarray, steps: int, num_replicas: int, per_replica_batch_size: int,
                          replica_id: int) -> np.ndarray:
    """The indices that one replica trains on at each step of an epoch: int64 [steps, per_replica_batch_size]
    (int64, as int32 tensors on a GPU live in host memory and would be copied to the device every step).

    Replica r takes the r-th contiguous slice of each global batch, as tf.distribute splits a tf.data batch.
    """
    used = order[:steps * num_replicas * per_replica_batch_size]
    return used.reshape(steps, num_replicas, per_replica_batch_size)[:, replica_id, :].astype(np.int64)

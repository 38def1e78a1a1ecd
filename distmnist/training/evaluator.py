"""The evaluator: accuracy over the whole test set, each replica counting its own rows on its own device, every
image counted once whatever the replica count. Knows nothing of schedules (controller.py asks it to evaluate())."""

import numpy as np
import tensorflow as tf

from distmnist.data.dataset import Mnist
from distmnist.training import hostthreads, inputs
from distmnist.training.model import images_to_features


class Evaluator:
    """evaluate() of a model (the trainer's, as it trains) on a data set's test images, under the model's strategy."""

    def __init__(self, strategy: tf.distribute.Strategy, model: tf.Module, mnist: Mnist, streams: int = 1) -> None:
        """streams: the trainer's (hostthreads.py): each replica's test rows in that many parts, each its own chain
        of ops, as its training batches (every row's answer is its own: the same answers)."""
        self.strategy = strategy
        self.streams = streams
        self.model = model
        self.num_replicas = strategy.num_replicas_in_sync
        self.num_test = len(mnist.x_test)
        self._test = self._shard_eval_set(mnist.x_test, mnist.y_test)  # (features, labels), made once
        replica_ids = strategy.experimental_local_results(inputs.on_each_replica(strategy, lambda r, n: np.int32(r)))
        self._local_test_rows = [
            slice(*inputs.shard_bounds(self.num_test, int(r), self.num_replicas)) for r in replica_ids
        ]  # the test rows each of this worker's replicas holds
        self._evaluate = tf.function(self._evaluate_fn, autograph=False)

    def _replica_evaluate(self, features: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(correct answers as float32, predicted classes): GPUs do not all-reduce int32 (TensorFlow's
        collective executor refuses it), and float32 counts exactly up to 2**24."""
        parts = (
            tf.split(features, hostthreads.part_sizes(int(features.shape[0]), self.streams))
            if self.streams > 1
            else [features]
        )
        predicted = tf.concat([tf.argmax(self.model(part), axis=-1, output_type=tf.int32) for part in parts], 0)
        correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
        return tf.reduce_sum(correct), predicted

    def _evaluate_fn(
        self, features: tf.distribute.DistributedValues, labels: tf.distribute.DistributedValues
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        correct, predicted = self.strategy.run(self._replica_evaluate, args=(features, labels))
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        return total, self.strategy.experimental_local_results(predicted)

    def _shard_eval_set(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[tf.distribute.DistributedValues, tf.distribute.DistributedValues]:
        """Each replica's rows of the evaluation set on its own device: float32 features, converted once rather
        than at every evaluation, and the labels."""

        def rows(r: int, n: int) -> slice:
            return slice(*inputs.shard_bounds(len(x), r, n))

        return (
            inputs.on_each_replica(self.strategy, lambda r, n: images_to_features(x[rows(r, n)])),
            inputs.on_each_replica(self.strategy, lambda r, n: y[rows(r, n)]),
        )

    def evaluate(self) -> tuple[float, np.ndarray]:
        """Accuracy over the whole test set, every image counted once whatever the replica count, and the
        predicted class of every test image (-1 for images another worker holds)."""
        correct, predicted = self._evaluate(*self._test)
        classes = np.full([self.num_test], -1, np.int32)
        for rows, replica_classes in zip(self._local_test_rows, predicted, strict=True):
            classes[rows] = replica_classes.numpy()
        return int(round(float(correct))) / self.num_test, classes

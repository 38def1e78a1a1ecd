"""The training and evaluation steps and the loop that drives them, the same code for 1 or N replicas.

One tf.function call runs up to `steps_per_loop` training steps on the device (a while loop around
strategy.run) and hands back every step's loss at the end, so the host syncs once per call, not per step.
Calls end early at epoch ends, evaluation points and checkpoints, so logged curves do not depend on
steps_per_loop.

With jit_compile, XLA compiles the whole multi-step call when there is one replica (measured on a 2-core CPU:
+15-25%), and each replica's gradient computation when there are several (collectives stay outside XLA).
"""

import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from distmnist import inputs
from distmnist.config import TrainConfig
from distmnist.data import Mnist
from distmnist.errors import TrainingDiverged, UserError
from distmnist.model import MLP, forward, images_to_features, labels_to_targets


def mse_loss(targets: tf.Tensor, logits: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """This replica's share of the global batch's mean squared error (summed over replicas it is the mean)."""
    per_example = tf.reduce_mean(tf.square(targets - logits), axis=-1)
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)


class Reporter:
    """What the loop tells the outside world; summaries.RunReporter writes it, tests may record it."""

    def losses(self, first_step: int, values: np.ndarray, examples_per_sec: float) -> None:
        pass

    def accuracy(self, step: int, value: float) -> None:
        pass


class Trainer:
    """Model, compiled steps and loop for one strategy and one data set."""

    def __init__(self, config: TrainConfig, strategy: tf.distribute.Strategy, mnist: Mnist,
                 loss_fn: Callable = mse_loss):
        self.config = config
        self.strategy = strategy
        self.loss_fn = loss_fn
        self.num_replicas = strategy.num_replicas_in_sync
        self.per_replica_batch_size = config.batch_size
        self.global_batch_size = config.batch_size * self.num_replicas
        self.num_train = len(mnist.x_train)
        self.num_test = len(mnist.x_test)
        self.steps_per_epoch = self.num_train // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the global batch ({config.batch_size} x {self.num_replicas} replicas = "
                            f"{self.global_batch_size}) is larger than the {self.num_train} training images; "
                            "lower --batch_size")
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.step = 0
        self.trace_count = 0  # Python traces of the training function: stays 1 for a whole run

        with strategy.scope():
            self.model = MLP(seed=config.seed)
        self._learning_rate = tf.constant(config.learning_rate, tf.float32)
        self._test = self._shard_eval_set(mnist.x_test, mnist.y_test)
        jit = config.resolved_jit_compile()
        whole_call_jit = jit and self.num_replicas == 1 and config.input == "device"
        self._gradients = tf.function(self._gradients_fn, jit_compile=True) if jit and not whole_call_jit \
            else self._gradients_fn
        if config.input == "device":
            self._order = inputs.EpochOrder(self.num_train, config.shuffle_buffer, config.seed)
            self._images = inputs.on_each_replica(strategy, lambda r, n: mnist.x_train)
            self._labels = inputs.on_each_replica(strategy, lambda r, n: mnist.y_train)
            self._chunk = tf.function(self._device_chunk, jit_compile=whole_call_jit or None)
        else:
            self._train_arrays = (mnist.x_train, mnist.y_train)
            self._iterator = self._tfdata_iterator(start_step=0)
            self._chunk = tf.function(self._tfdata_chunk)
        self._evaluate = tf.function(self._evaluate_fn)

    @property
    def epochs(self) -> float:
        return self.step / self.steps_per_epoch

    # --- replica functions -------------------------------------------------------------------------------

    def _gradients_fn(self, weights, features, targets):
        """Pure maths, so XLA can compile it: (gradients, this replica's loss) for explicit weight tensors."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = self.loss_fn(targets, forward(weights, features), self.global_batch_size)
        return tape.gradient(loss, weights), loss

    def _replica_train_step(self, features, targets):
        weights = [tf.convert_to_tensor(v) for v in self.model.weights]
        grads, loss = self._gradients(weights, features, targets)
        ctx = tf.distribute.get_replica_context()
        # One all-reduce for the gradients and the loss together; the loss rides along for logging.
        *grads, loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads) + [loss])
        ctx.merge_call(self._apply_sgd, args=(grads,))
        return loss

    def _apply_sgd(self, strategy, grads):
        for variable, grad in zip(self.model.weights, grads):
            strategy.extended.update(variable, lambda v, g: v.assign_sub(self._learning_rate * g),
                                     args=(grad,), group=False)

    def _replica_device_step(self, images, labels, batch_indices, step_in_epoch):
        indices = tf.gather(batch_indices, step_in_epoch)  # a gather, not a slice: XLA keeps the step dynamic
        features = images_to_features(tf.gather(images, indices))
        return self._replica_train_step(features, labels_to_targets(tf.gather(labels, indices)))

    def _replica_count_correct(self, images, labels):
        predicted = tf.argmax(self.model(images_to_features(images)), axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.int32))

    # --- compiled functions (cross-replica context) --------------------------------------------------------

    def _steps(self, num_steps, run_step):
        """Runs run_step(i) for i < num_steps on the device, collecting each step's loss (from replica 0).

        A fixed-size loss buffer (not num_steps) and a plain while loop: XLA then compiles once for every length.
        """
        self.trace_count += 1
        losses = tf.TensorArray(tf.float32, size=self.config.steps_per_loop)
        i = tf.constant(0)
        while i < num_steps:
            losses = losses.write(i, self.strategy.experimental_local_results(run_step(i))[0])
            i += 1
        return losses.stack()

    def _device_chunk(self, images, labels, batch_indices, first_step_in_epoch, num_steps):
        return self._steps(num_steps, lambda i: self.strategy.run(
            self._replica_device_step, args=(images, labels, batch_indices, first_step_in_epoch + i)))

    def _tfdata_chunk(self, iterator, num_steps):
        return self._steps(num_steps, lambda i: self.strategy.run(self._replica_train_step, args=next(iterator)))

    def _evaluate_fn(self, images, labels):
        correct = self.strategy.run(self._replica_count_correct, args=(images, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)

    # --- host side -------------------------------------------------------------------------------------------

    def _tfdata_iterator(self, start_step: int):
        x, y = self._train_arrays
        return iter(self.strategy.distribute_datasets_from_function(
            lambda context: inputs.tfdata_pipeline(x, y, self.global_batch_size, self.config.shuffle_buffer,
                                                   self.config.seed, context, start_step)))

    def _shard_eval_set(self, x, y):
        def shard(array):
            return lambda r, n: array[slice(*inputs.shard_bounds(len(array), r, n))]
        return inputs.on_each_replica(self.strategy, shard(x)), inputs.on_each_replica(self.strategy, shard(y))

    def evaluate(self) -> float:
        """Accuracy over the whole test set, every image counted once whatever the replica count."""
        return int(self._evaluate(*self._test)) / self.num_test

    def weights(self):
        """The trained values as numpy arrays, kernel_0, bias_0, ... (from the first replica)."""
        return [self.strategy.experimental_local_results(v)[0].numpy() for v in self.model.weights]

    def _start_epoch(self) -> None:
        if self.config.input == "device":
            order = self._order.next_epoch()
            self._batch_indices = inputs.on_each_replica(
                self.strategy, lambda r, n: inputs.replica_batch_indices(
                    order, self.steps_per_epoch, n, self.per_replica_batch_size, r))

    def _run_chunk(self, step_in_epoch: int, num_steps: int) -> np.ndarray:
        count = tf.constant(num_steps, tf.int32)
        if self.config.input == "device":
            losses = self._chunk(self._images, self._labels, self._batch_indices,
                                 tf.constant(step_in_epoch, tf.int32), count)
        else:
            losses = self._chunk(self._iterator, count)
        return losses.numpy()[:num_steps]

    def run_steps(self, num_steps: int, on_chunk: Optional[Callable] = None) -> np.ndarray:
        """Trains num_steps more steps across epochs, in calls of at most steps_per_loop; returns their losses.

        on_chunk(first_step, losses, seconds) is called after each call. Raises TrainingDiverged on a
        non-finite loss.
        """
        end = self.step + num_steps
        collected = []
        while self.step < end:
            step_in_epoch = self.step % self.steps_per_epoch
            if step_in_epoch == 0:
                self._start_epoch()
            count = min(self.config.steps_per_loop, self.steps_per_epoch - step_in_epoch, end - self.step)
            start = time.perf_counter()
            losses = self._run_chunk(step_in_epoch, count)
            elapsed = time.perf_counter() - start
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise TrainingDiverged(f"the loss became {losses[bad[0]]} at step {self.step + bad[0]}; "
                                       "lower --learning_rate")
            if on_chunk:
                on_chunk(self.step, losses, elapsed)
            collected.append(losses)
            self.step += count
        return np.concatenate(collected) if collected else np.zeros([0], np.float32)

    def resume_at(self, step: int) -> None:
        """Puts the input where an uninterrupted run would be after `step` steps (after a checkpoint restore)."""
        self.step = step
        if self.config.input == "device":
            for _ in range(step // self.steps_per_epoch):
                self._order.next_epoch()
            if step % self.steps_per_epoch:
                self._start_epoch()
        else:
            self._iterator = self._tfdata_iterator(start_step=step)

    def train(self, reporter: Reporter, on_boundary: Optional[Callable] = None) -> dict:
        """Runs from self.step to total_steps, evaluating at step 0, every eval_every steps and at the end.

        on_boundary(step) is called at every multiple of checkpoint_every and at the end (for checkpoints).
        Returns timings.
        """
        timing = {"first_call_s": None, "timed_s": 0.0, "timed_examples": 0, "train_time_s": 0.0}

        def on_chunk(first_step, losses, seconds):
            examples = len(losses) * self.global_batch_size
            timing["train_time_s"] += seconds
            if timing["first_call_s"] is None:
                timing["first_call_s"] = seconds  # includes tracing and compilation: kept out of the throughput
            else:
                timing["timed_s"] += seconds
                timing["timed_examples"] += examples
            reporter.losses(first_step, losses, examples / seconds)

        if self.step == 0:
            reporter.accuracy(0, self.evaluate())
        every, save_every = self.config.eval_every, self.config.checkpoint_every or self.total_steps
        while self.step < self.total_steps:
            next_eval = (self.step // every + 1) * every
            next_save = (self.step // save_every + 1) * save_every
            self.run_steps(min(next_eval, next_save, self.total_steps) - self.step, on_chunk)
            if self.step % every == 0 or self.step == self.total_steps:
                reporter.accuracy(self.step, self.evaluate())
            if on_boundary and (self.step % save_every == 0 or self.step == self.total_steps):
                on_boundary(self.step)
        timed_s = timing["timed_s"]
        return {
            "examples_per_sec": timing["timed_examples"] / timed_s if timed_s else None,
            "first_call_s": timing["first_call_s"],
            "train_time_s": timing["train_time_s"],
        }

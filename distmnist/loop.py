"""The training and evaluation steps and the loop that drives them, the same code for 1 or N replicas.

One tf.function call runs up to `steps_per_loop` training steps on the device (a while loop around
strategy.run) and hands back every step's loss at the end, so the host syncs once per call, not per step.
Calls end early at epoch ends, evaluation points and checkpoints, so logged curves do not depend on
steps_per_loop. A non-finite loss or gradient ends the call on the device after the step it appeared in,
and a stop request (a signal) is honoured between calls.

With jit_compile, XLA compiles the whole multi-step call when there is one replica, and each replica's gradient
computation when there are several (collectives stay outside XLA); docs/performance.md has what each is worth.
"""

import functools
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
    # tf.nn.compute_average_loss's arithmetic without its Assert, which checks a Python constant in every step
    # and, on a GPU, copies its condition to the host to do so.
    return tf.math.divide_no_nan(tf.reduce_sum(per_example), tf.constant(global_batch_size, per_example.dtype))


class Reporter:
    """What the loop tells the outside world; summaries.RunReporter writes it, tests may record it."""

    def losses(self, first_step: int, values: np.ndarray, examples_per_sec: float) -> None:
        pass

    def accuracy(self, step: int, value: float) -> None:
        pass

    def predictions(self, step: int, classes: np.ndarray) -> None:
        """The predicted class of every test image at an evaluation (-1 for images another worker holds)."""


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
        self.stopped = False  # set when a stop request ended run_steps early
        self.trace_count = 0  # Python traces of the training function: stays 1 for a whole run

        with strategy.scope():
            self.model = MLP(seed=config.seed)
        self._learning_rate = tf.constant(config.learning_rate, tf.float32)
        self._test = self._shard_eval_set(mnist.x_test, mnist.y_test)
        replica_ids = strategy.experimental_local_results(inputs.on_each_replica(strategy, lambda r, n: np.int32(r)))
        self._local_test_rows = [slice(*inputs.shard_bounds(self.num_test, int(r), self.num_replicas))
                                 for r in replica_ids]  # the test rows each of this worker's replicas holds
        jit = config.resolved_jit_compile()
        whole_call_jit = jit and self.num_replicas == 1 and config.input == "device"
        self._gradients = tf.function(self._gradients_fn, jit_compile=True) if jit and not whole_call_jit \
            else self._gradients_fn
        if config.input == "device":
            # In the training dtype already, computed on each replica's device: a step only gathers float32 rows
            # (GatherV2 has GPU kernels for float32, none for uint8), with int64 indices.
            self._order = inputs.EpochOrder(self.num_train, config.shuffle_buffer, config.seed)
            self._features = inputs.on_each_replica(strategy, lambda r, n: images_to_features(mnist.x_train))
            self._targets = inputs.on_each_replica(strategy, lambda r, n: labels_to_targets(mnist.y_train))
            self._chunk = tf.function(self._device_chunk, jit_compile=whole_call_jit or None)
        else:
            self._train_arrays = (mnist.x_train, mnist.y_train)
            self._iterator = self._tfdata_iterator(start_step=0)
            self._chunk = tf.function(self._tfdata_chunk)
        self._evaluate = tf.function(self._evaluate_fn)
        self._any_replica = tf.function(self._any_replica_fn)  # traced only in a cluster, where it is used
        self._from_replica_0 = tf.function(self._from_replica_0_fn)

    @property
    def epochs(self) -> float:
        return self.step / self.steps_per_epoch

    # --- replica functions -------------------------------------------------------------------------------

    def _gradients_fn(self, weights, features, targets):
        """Pure maths, so XLA can compile it: (gradients, this replica's loss, whether both are finite)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = self.loss_fn(targets, forward(weights, features), self.global_batch_size)
        grads = tape.gradient(loss, weights)
        # A NaN or inf anywhere makes the sum non-finite: one reduction per tensor, no per-element flags.
        finite = tf.math.is_finite(loss + tf.add_n([tf.reduce_sum(g) for g in grads]))
        return grads, loss, finite

    def _replica_train_step(self, features, targets):
        """One SGD step; returns the global batch's loss and, per replica, 1 where its loss or gradient was
        not finite."""
        weights = [tf.convert_to_tensor(v) for v in self.model.weights]
        grads, loss, finite = self._gradients(weights, features, targets)
        ctx = tf.distribute.get_replica_context()
        bad = tf.one_hot(ctx.replica_id_in_sync_group, self.num_replicas) * (1.0 - tf.cast(finite, tf.float32))
        # One all-reduce for the gradients and, in one small vector, the loss and the non-finite marks: each
        # tensor is a collective of its own between workers, so the marks must not add one.
        *grads, stats = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads) + [tf.concat([[loss], bad], 0)])
        ctx.merge_call(functools.partial(self._update_weights, update=self._sgd), args=(grads,))
        return stats[0], stats[1:]

    def _sgd(self, variable, grad):
        return variable.assign_sub(self._learning_rate * grad)

    def _update_weights(self, strategy, values, update):
        """update(variable, value) on every replica's copy of each weight (SGD, or taking replica 0's); the
        merge_call target, with `update` bound beforehand (merge_call would treat it as per-replica data)."""
        for variable, value in zip(self.model.weights, values):
            strategy.extended.update(variable, update, args=(value,), group=False)

    def _replica_device_step(self, features, targets, batch_indices, step_in_epoch):
        indices = tf.gather(batch_indices, step_in_epoch)  # a gather, not a slice: XLA keeps the step dynamic
        return self._replica_train_step(tf.gather(features, indices), tf.gather(targets, indices))

    def _replica_evaluate(self, images, labels):
        """(correct answers as float32, predicted classes): GPUs do not all-reduce int32 (TensorFlow's
        collective executor refuses it), and float32 counts exactly up to 2**24."""
        predicted = tf.argmax(self.model(images_to_features(images)), axis=-1, output_type=tf.int32)
        correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
        return tf.reduce_sum(correct), predicted

    # --- compiled functions (cross-replica context) --------------------------------------------------------

    def _steps(self, num_steps, run_step):
        """Runs run_step(i) for i < num_steps on the device, collecting each step's loss (from replica 0), and
        stops after a step that marked a replica non-finite. Returns (losses, steps run, the last marks).

        A fixed-size loss buffer (not num_steps) and a plain while loop: XLA then compiles once for every length.
        """
        self.trace_count += 1
        losses = tf.TensorArray(tf.float32, size=self.config.steps_per_loop)
        bad = tf.zeros([self.num_replicas])
        i = tf.constant(0)
        while i < num_steps and tf.reduce_max(bad) == 0.0:
            loss, bad = (self.strategy.experimental_local_results(v)[0] for v in run_step(i))
            losses = losses.write(i, loss)
            i += 1
        return losses.stack(), i, bad

    def _device_chunk(self, features, targets, batch_indices, first_step_in_epoch, num_steps):
        return self._steps(num_steps, lambda i: self.strategy.run(
            self._replica_device_step, args=(features, targets, batch_indices, first_step_in_epoch + i)))

    def _tfdata_chunk(self, iterator, num_steps):
        return self._steps(num_steps, lambda i: self.strategy.run(self._replica_train_step, args=next(iterator)))

    def _evaluate_fn(self, images, labels):
        correct, predicted = self.strategy.run(self._replica_evaluate, args=(images, labels))
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        return total, self.strategy.experimental_local_results(predicted)

    def _any_replica_fn(self, flag):
        summed = self.strategy.run(  # tf.identity puts the host's flag on the replica's device
            lambda f: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(f)),
            args=(flag,))
        return self.strategy.experimental_local_results(summed)[0]

    def _from_replica_0_fn(self, step):
        """Every replica takes replica 0's weights and step: a sum in which every other replica adds zeros (the
        step in float64, exact far beyond any run's length; GPUs do not all-reduce integers)."""
        def replica(step):
            ctx = tf.distribute.get_replica_context()
            keep = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)
            weights = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.convert_to_tensor(v) * keep
                                                                  for v in self.model.weights])
            step = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(step) * tf.cast(keep, tf.float64))
            ctx.merge_call(functools.partial(self._update_weights, update=lambda v, x: v.assign(x)), args=(weights,))
            return step
        return self.strategy.experimental_local_results(self.strategy.run(replica, args=(step,)))[0]

    # --- host side -------------------------------------------------------------------------------------------

    def any_replica(self, flag: bool) -> bool:
        """Whether flag is true on any worker. A collective: every worker calls it at the same point."""
        return float(self._any_replica(tf.constant(float(flag)))) > 0

    def adopt_replica_0(self, step: int) -> int:
        """Gives every worker the chief's weights and step (a resumed multi-worker run restores on the chief
        only); returns the step. A collective, like any_replica."""
        return int(self._from_replica_0(tf.constant(step, tf.float64)))

    def graphs(self) -> dict:
        """The GraphDefs of every function this trainer runs, by name, traced for its strategy and input path:
        what TensorFlow will place on the devices (the tests check them against the GPU kernel registry)."""
        count = tf.constant(1, tf.int32)
        if self.config.input == "device":
            self._start_epoch()
            chunk = self._chunk.get_concrete_function(self._features, self._targets, self._batch_indices,
                                                      tf.constant(0, tf.int32), count)
        else:
            chunk = self._chunk.get_concrete_function(self._iterator, count)
        functions = {
            "train": chunk,
            "evaluate": self._evaluate.get_concrete_function(*self._test),
            "any_replica": self._any_replica.get_concrete_function(tf.constant(0.0)),
            "from_replica_0": self._from_replica_0.get_concrete_function(tf.constant(0.0, tf.float64)),
        }
        return {name: fn.graph.as_graph_def() for name, fn in functions.items()}

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
        """Accuracy over the whole test set, every image counted once whatever the replica count; the predicted
        classes are kept in self.test_predictions (-1 for images another worker holds)."""
        correct, predicted = self._evaluate(*self._test)
        self.test_predictions = np.full([self.num_test], -1, np.int32)
        for rows, classes in zip(self._local_test_rows, predicted):
            self.test_predictions[rows] = classes.numpy()
        return int(round(float(correct))) / self.num_test

    def _report_evaluation(self, reporter: Reporter) -> None:
        reporter.accuracy(self.step, self.evaluate())
        reporter.predictions(self.step, self.test_predictions)

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
            losses, done, bad = self._chunk(self._features, self._targets, self._batch_indices,
                                            tf.constant(step_in_epoch, tf.int32), count)
        else:
            losses, done, bad = self._chunk(self._iterator, count)
        losses, replicas = losses.numpy()[:int(done)], np.flatnonzero(bad.numpy())
        if replicas.size:
            step = self.step + len(losses) - 1
            raise TrainingDiverged(step, int(replicas[0]), float(losses[-1]))
        return losses

    def run_steps(self, num_steps: int, on_chunk: Optional[Callable] = None,
                  should_stop: Callable[[], bool] = lambda: False) -> np.ndarray:
        """Trains num_steps more steps across epochs, in calls of at most steps_per_loop; returns their losses.

        on_chunk(first_step, losses, seconds) is called after each call. should_stop() is asked before each
        call; when it says yes, the steps end there and self.stopped is set. Raises TrainingDiverged when a
        step's loss or gradient is not finite (the weights are then not to be saved).
        """
        end = self.step + num_steps
        collected = []
        while self.step < end:
            if should_stop():
                self.stopped = True
                break
            step_in_epoch = self.step % self.steps_per_epoch
            if step_in_epoch == 0:
                self._start_epoch()
            count = min(self.config.steps_per_loop, self.steps_per_epoch - step_in_epoch, end - self.step)
            start = time.perf_counter()
            losses = self._run_chunk(step_in_epoch, count)
            elapsed = time.perf_counter() - start
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

    def train(self, reporter: Reporter, on_boundary: Optional[Callable] = None,
              should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Runs from self.step to total_steps, evaluating at step 0, every eval_every steps and at the end.

        on_boundary(step) is called at every multiple of checkpoint_every and at the end (for checkpoints), and
        where a stop request ends the run early (then self.stopped is True). Returns timings.
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
            self._report_evaluation(reporter)
        every, save_every = self.config.eval_every, self.config.checkpoint_every or self.total_steps
        saved_at = self.step
        while self.step < self.total_steps:
            next_eval = (self.step // every + 1) * every
            next_save = (self.step // save_every + 1) * save_every
            self.run_steps(min(next_eval, next_save, self.total_steps) - self.step, on_chunk, should_stop)
            if self.stopped:
                if on_boundary and saved_at != self.step:
                    on_boundary(self.step)
                break
            if self.step % every == 0 or self.step == self.total_steps:
                self._report_evaluation(reporter)
            if on_boundary and (self.step % save_every == 0 or self.step == self.total_steps):
                on_boundary(self.step)
                saved_at = self.step
        timed_s = timing["timed_s"]
        return {
            "examples_per_sec": timing["timed_examples"] / timed_s if timed_s else None,
            "first_call_s": timing["first_call_s"],
            "train_time_s": timing["train_time_s"],
        }

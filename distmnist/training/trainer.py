"""The trainer: the model under a strategy and the compiled multi-step training call, with its checked replay and
mixed_float16's loss scale. The same code for 1 or N replicas and for either input path (inputs.DeviceInput or
inputs.TfdataInput). Evaluation is the evaluator's (evaluator.py), the workers' agreement the agreement's
(agreement.py); when to evaluate, checkpoint and stop is the controller's business (controller.py).

One tf.function call runs `steps_per_loop` training steps on the device (a loop around strategy.run) and hands back
every step's loss at the end, so the host syncs once per call, not per step. With the device-resident input the trip
count is a constant of the trace (a call of fewer steps masks the rest: on CPUs the masked iterations compute
nothing), and a call runs across epoch ends. Nothing in the loop is read back by the host, and nothing in a step
checks for NaN or inf: a weight once non-finite stays so, so the call ends by checking the weights once, and the
host checks the losses. When either is not finite, the weights go back to where the call started (a copy kept on the
device) and the same steps run again in the checked call, where a step whose loss or gradient is not finite, and
every step after it, leave the weights as they were: the call returns the first such step and its replicas. tf.data
cannot replay a call's batches, so over tf.data every call is the checked one.

With jit_compile, XLA compiles the whole multi-step call when there is one replica and the input allows it;
otherwise each replica's step is two XLA launches, its batch and gradients, then its SGD update, with the
all-reduce between them outside XLA; docs/performance.md has what each is worth. Without XLA (the bfloat16 path on
CPUs that have it, docs/precision.md), the unchecked call is the lean one: TensorFlow's graph executor pays for every
node of every step, so it runs num_steps iterations with nothing to mask and nothing to mark (_lean_call_fn). There,
each replica's batch may be split into `streams` chains of ops that run side by side (hostthreads.py).
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from distmnist.common.errors import GradientsOverflowed, TrainingDiverged, UserError
from distmnist.data.dataset import Mnist
from distmnist.training import inputs, replicas, stepmaths
from distmnist.training.devices import all_cpus
from distmnist.training.model import MLP


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What the trainer needs of a run's config, every field given: runsetup.trainer_settings makes it from a
    TrainConfig (test harnesses may give it in full). No defaults here: the config's are the only ones."""

    batch_size: int  # per replica
    learning_rate: float
    seed: int
    steps_per_loop: int  # the most steps one compiled call runs (a constant of its trace)
    shuffle_buffer: int
    input: str  # "device": inputs.DeviceInput, or "tfdata": inputs.TfdataInput
    jit_compile: bool  # as devices.resolve_xla decided it for the run
    total_steps: int | None  # the steps the run will train, so the input draws its epochs' orders ahead, while
    # the call compiles, and no more (None: not known; each epoch's order is then drawn one ahead, as it trains)
    precision: str  # "float32", "mixed_bfloat16", "mixed_float16" (with dynamic loss scaling)
    loss_scale_growth_steps: int  # mixed_float16: good steps in a row that double the loss scale
    streams: int  # parts of each replica's batch, each its own chain of ops (hostthreads.py; 1: the batch whole)


COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}
INITIAL_LOSS_SCALE = 2.0**15  # Keras's
LOSS_SCALE_GROWTH_STEPS = 2000  # Keras's: good steps in a row that double the loss scale
# mixed_float16: steps skipped in a row at loss scale 1 that end the run as a divergence does. Halving the scale
# cannot help there, so every later step would be skipped too: a run that trains nothing and exports its start.
MAX_SKIPPED_AT_SCALE_1 = 100


class LossScale(tf.Module):
    """mixed_float16's dynamic loss scale: the scale, the good steps since it last changed, and the steps skipped
    (float32 scalars: GPUs keep int32 variables in host memory). Checkpointed with the model. The trainer also
    counts the steps skipped in a row at scale 1: MAX_SKIPPED_AT_SCALE_1 of them end the run (GradientsOverflowed)."""

    def __init__(self) -> None:
        super().__init__(name="loss_scale")
        self.scale = tf.Variable(INITIAL_LOSS_SCALE, trainable=False, name="scale")
        self.good_steps = tf.Variable(0.0, trainable=False, name="good_steps")
        self.skipped = tf.Variable(0.0, trainable=False, name="skipped")

    @property
    def state(self) -> list[tf.Variable]:
        return [self.scale, self.good_steps, self.skipped]


def steps_per_epoch(num_train: int, batch_size: int, num_replicas: int) -> int:
    """Full global batches in an epoch; UserError when the global batch is larger than the training set."""
    global_batch_size = batch_size * num_replicas
    if num_train < global_batch_size:
        raise UserError(
            f"the global batch ({batch_size} x {num_replicas} replicas = {global_batch_size}) is larger "
            f"than the {num_train} training images; lower --batch_size"
        )
    return num_train // global_batch_size


def run_steps(trainer: "Trainer", num_steps: int, steps_per_call: int | None = None) -> np.ndarray:
    """Trains num_steps more steps in calls of at most steps_per_call (default: the trainer's steps_per_loop), with
    no schedule around them: for harnesses and tests. Returns the losses."""
    per_call = min(steps_per_call or trainer.steps_per_loop, trainer.steps_per_loop)
    end = trainer.step + num_steps
    losses = [trainer.train(min(per_call, end - trainer.step)) for _ in range(-(-num_steps // per_call))]
    return np.concatenate(losses) if losses else np.zeros([0], np.float32)


def unfused(precision: str, jit_compile: bool, devices: Sequence[str]) -> bool:
    """Pure: whether a trainer's step must run without Grappler's remapper: float16 outside XLA on the CPU (devices:
    the strategy's). The remapper fuses each matmul with its bias add (BiasAdd or AddV2) and ReLU, and TensorFlow
    2.21's oneDNN runs that fused matmul in float16 hundreds of times slower than the matmul and the add apart: on a
    Xeon with avx512_fp16, 128x784 by 784x512 and a bias, 0.78 s against 1.4 ms (docs/precision.md)."""
    return precision == "mixed_float16" and not jit_compile and all_cpus(devices)


class Trainer:
    """Model and compiled training calls for one strategy and one training set: train(n)."""

    def __init__(
        self,
        settings: TrainerSettings,
        strategy: tf.distribute.Strategy,
        mnist: Mnist,
        loss_fn: stepmaths.LossFn = stepmaths.mse_loss,
    ) -> None:
        """Raises UserError when the global batch is larger than the training set."""
        config = self.settings = settings
        self.strategy = strategy
        self.loss_fn = loss_fn
        self.num_replicas = strategy.num_replicas_in_sync
        self.per_replica_batch_size = config.batch_size
        self.global_batch_size = config.batch_size * self.num_replicas
        self.num_train = len(mnist.x_train)
        self.steps_per_epoch = steps_per_epoch(self.num_train, config.batch_size, self.num_replicas)
        self.steps_per_loop = config.steps_per_loop
        self.step = 0
        self.trace_count = 0  # Python traces of the training function: stays 1 for a whole run

        self.compute_dtype = COMPUTE_DTYPES[config.precision]
        if unfused(config.precision, config.jit_compile, strategy.extended.worker_devices):
            # Process-wide, as TensorFlow's optimizer options are: later trainers in this process lose the fusion too
            tf.config.optimizer.set_experimental_options({"remapping": False})
        if config.streams > 1 and (self.compute_dtype == tf.float32 or config.batch_size < config.streams):
            raise ValueError(f"streams={config.streams}: only a low precision splits its batch, a row a part or more")
        with strategy.scope():
            self.model = MLP(seed=config.seed)
            self.loss_scale = LossScale() if config.precision == "mixed_float16" else None
            # The steps skipped in a row at scale 1 (stepmaths.update_loss_scale): not the LossScale's, so not in
            # checkpoints, which a resume of an earlier run must still restore.
            self._loss_scale_state = (
                self.loss_scale.state + [tf.Variable(0.0, trainable=False, name="skipped_at_1")]
                if self.loss_scale
                else []
            )
            # Everything a step changes: the weights, and the loss scale's state.
            self._state = self.model.weights + self._loss_scale_state
            # Where the current call started, to run it again with checks (not in any checkpoint).
            self._call_start = [
                tf.Variable(tf.zeros(v.shape), trainable=False, name=f"call_start_{i}")
                for i, v in enumerate(self._state)
            ]
        self._learning_rate = tf.constant(config.learning_rate, tf.float32)
        if config.input == "device":
            self.input: inputs.DeviceInput | inputs.TfdataInput = inputs.DeviceInput(
                strategy,
                mnist.x_train,
                mnist.y_train,
                self.steps_per_epoch,
                self.per_replica_batch_size,
                config.steps_per_loop,
                config.shuffle_buffer,
                config.seed,
                epochs=-(-config.total_steps // self.steps_per_epoch) if config.total_steps else None,
                dtype=self.compute_dtype,
            )
        else:
            self.input = inputs.TfdataInput(
                strategy, mnist.x_train, mnist.y_train, self.global_batch_size, config.shuffle_buffer, config.seed
            )
        jit = config.jit_compile
        whole_call_jit = jit and self.num_replicas == 1 and self.input.xla_whole_call
        self.compiled_whole_call = whole_call_jit  # XLA takes the whole call, its loop included
        # A shorter call's masked iterations skip their batch and gradients on CPUs, where choosing is a branch;
        # on a GPU, XLA would copy each step's choice to the host, so there they compute and are discarded.
        self.skips_masked_steps = self.input.static_trip_count and all(
            tf.DeviceSpec.from_string(d).device_type == "CPU" for d in strategy.extended.worker_devices
        )
        # No Python control flow on tensors in any of these: AutoGraph's conversion would only add to their tracing
        # (docs/performance.md, "No AutoGraph where nothing needs it").
        per_replica_jit = (
            functools.partial(tf.function, jit_compile=True, autograph=False)
            if jit and not whole_call_jit
            else (lambda fn: fn)
        )
        self._gradients = per_replica_jit(self._batch_gradients)
        self._checked_gradients = per_replica_jit(self._checked_batch_gradients)
        self._sgd_all = per_replica_jit(stepmaths.sgd_all)
        self._update_loss_scale = functools.partial(
            stepmaths.update_loss_scale, growth_steps=float(config.loss_scale_growth_steps)
        )
        self.checks_each_step = not self.input.replayable  # every call checked: it cannot be run again
        # The unchecked call on the graph executor, without XLA: the lean one (without loss scaling, whose state
        # every step updates on its own terms).
        self.lean_call = not jit and self.loss_scale is None
        call = functools.partial(tf.function, jit_compile=whole_call_jit or None, autograph=False)
        self._call = call(functools.partial(self._call_fn, False))  # what a run uses
        self._checked_call = call(functools.partial(self._call_fn, True))  # traced when a call must be checked

    @property
    def epochs(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def state(self) -> list[tf.Variable]:
        """Everything a step changes: the weights, and the loss scale's state (what a worker takes from the chief)."""
        return self._state

    # --- replica functions -------------------------------------------------------------------------------

    def _replica_train_step(
        self, checked: bool, active: tf.Tensor, *batch_args: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One SGD step on this replica's batch, applied where `active` (and, when checked, where every replica's
        loss and gradient are finite); returns the global batch's loss and, when checked, per replica, 1 where its
        loss or gradient was not finite (otherwise an empty vector)."""
        weights = [tf.convert_to_tensor(v) for v in self.model.weights]
        ctx = tf.distribute.get_replica_context()
        scale = tf.convert_to_tensor(self.loss_scale.scale) if self.loss_scale else None
        if checked:
            grads, loss, finite = self._checked_gradients(weights, scale, *batch_args)
            bad = tf.one_hot(ctx.replica_id_in_sync_group, self.num_replicas) * (1.0 - tf.cast(finite, tf.float32))
        else:
            compute = functools.partial(self._gradients, weights, scale, *batch_args)
            grads, loss = (
                tf.cond(active, compute, lambda: ([tf.zeros_like(w) for w in weights], tf.zeros([])))
                if self.skips_masked_steps
                else compute()
            )
            bad = tf.zeros([0])
        # mixed_float16: whether this replica's scaled gradients overflowed (then every replica skips the step).
        overflow = [[1.0 - tf.cast(stepmaths.all_finite(0.0, grads), tf.float32)]] if self.loss_scale else []
        # One all-reduce for the gradients and, in one small vector, the loss, the overflows and the non-finite
        # marks: each tensor is a collective of its own between workers, so these must not add one.
        *grads, stats = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, list(grads) + [tf.concat([[loss], *overflow, bad], 0)]
        )
        marks = stats[1 + len(overflow) :]
        # A step whose loss or gradient is not finite changes nothing, the loss scale's state included.
        apply = tf.logical_and(active, tf.reduce_max(marks) == 0.0) if checked else active
        if self.loss_scale:
            overflowed = stats[1] > 0.0
            flags = tf.stack([tf.cast(apply, tf.float32), tf.cast(overflowed, tf.float32)])
            apply = tf.logical_and(apply, tf.logical_not(overflowed))
            ctx.merge_call(
                functools.partial(self._update_copies, self._loss_scale_state, update=self._update_loss_scale),
                args=([flags],),
            )
        sgd = functools.partial(self._sgd_all, learning_rate=self._learning_rate, apply=apply)
        ctx.merge_call(functools.partial(self._update_copies, self.model.weights, update=sgd), args=(grads,))
        return stats[0], marks

    def _lean_replica_step(self, *batch_args: tf.Tensor) -> tf.Tensor:
        """_replica_train_step's unchecked step as the lean call runs it (every step applies, no loss scale): the
        same gradients, sum and update, with no branch, no marks and no select; with one replica the loss is
        returned as it is, the all-reduce of one replica being its identity. Returns the global batch's loss."""
        weights = [tf.convert_to_tensor(v) for v in self.model.weights]
        grads, loss = self._gradients(weights, None, *batch_args)
        ctx = tf.distribute.get_replica_context()
        if self.num_replicas > 1:  # the loss in the gradients' all-reduce, as ever: no collective of its own
            *grads, loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads) + [tf.reshape(loss, [1])])
            loss = loss[0]
        sgd = functools.partial(stepmaths.sgd_every_step, learning_rate=self._learning_rate)
        ctx.merge_call(functools.partial(self._update_copies, self.model.weights, update=sgd), args=(grads,))
        return loss

    def _batch_gradients(
        self, weights: Sequence[tf.Tensor], loss_scale: tf.Tensor | None, *batch_args: tf.Tensor
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """This replica's batch (the device-resident input's gather) and its gradients: one XLA launch a replica
        when XLA cannot take the whole call. loss_scale: mixed_float16's (None otherwise)."""
        features, targets = self.input.batch(*batch_args)
        return stepmaths.gradients(
            weights,
            features,
            targets,
            self.global_batch_size,
            self.loss_fn,
            self.compute_dtype,
            loss_scale,
            self.settings.streams,
        )

    def _checked_batch_gradients(
        self, weights: Sequence[tf.Tensor], loss_scale: tf.Tensor | None, *batch_args: tf.Tensor
    ) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        """_batch_gradients and whether the loss and every gradient are finite (under loss scaling, whether the
        loss is: an overflowing gradient skips the step instead)."""
        grads, loss = self._batch_gradients(weights, loss_scale, *batch_args)
        return grads, loss, tf.math.is_finite(loss) if loss_scale is not None else stepmaths.all_finite(loss, grads)

    def _update_copies(
        self,
        targets: Sequence[tf.Variable],
        strategy: tf.distribute.Strategy,
        values: Sequence[tf.distribute.DistributedValues],
        update: replicas.Update,
    ) -> None:
        """The merge_call target, as replicas.update_copies: SGD on the weights (one XLA launch a replica under
        per-replica XLA) or the loss scale's state, on every replica's copy in one call."""
        self._on_each_copy(targets, values, update)

    def _on_each_copy(
        self, targets: Sequence[tf.Variable], values: Sequence[tf.distribute.DistributedValues], update: replicas.Update
    ) -> None:
        replicas.on_each_copy(self.strategy, targets, values, update)

    # --- compiled functions (cross-replica context) --------------------------------------------------------

    def _call_fn(self, checked: bool, num_steps: tf.Tensor, *call_args: object) -> tuple[tf.Tensor, ...]:
        """Runs num_steps (<= steps_per_loop) steps on the device, collecting each step's loss (from replica 0).
        Unchecked, it first keeps the weights where it starts, and returns (losses [steps_per_loop], whether the
        weights it ends with are finite). Checked, it returns (losses, the first step whose loss or gradient was
        not finite or -1, and that step's non-finite marks per replica).

        The loop runs steps_per_loop iterations, a constant of the trace, when the input can mask a step (the
        device-resident one: XLA then knows the trip count, and no GPU copies a loop condition to the host);
        over tf.data it runs num_steps, as a masked step would still take a batch (and so does the unchecked call
        without XLA: _lean_call_fn). A step past num_steps changes nothing (and, unchecked on CPUs, computes
        nothing), nor, in the checked call, one at or after a non-finite one.
        """
        if checked == self.checks_each_step:
            self.trace_count += 1  # the call a run makes
        if not checked and self.lean_call:
            return self._lean_call_fn(num_steps, *call_args)
        size = self.steps_per_loop
        trip = size if self.input.static_trip_count else num_steps
        local = self.strategy.experimental_local_results
        if not checked:
            self._on_each_copy(self._call_start, self._state, stepmaths.assign_all)

        def body(
            i: tf.Tensor, losses: tf.TensorArray, first_bad: tf.Tensor, bad_marks: tf.Tensor
        ) -> tuple[tf.Tensor, tf.TensorArray, tf.Tensor, tf.Tensor]:
            active = tf.logical_and(i < num_steps, first_bad < 0) if checked else i < num_steps
            outputs = self.strategy.run(
                self._replica_train_step, args=(checked, active, *self.input.step_args(call_args, i))
            )
            loss, bad = (local(v)[0] for v in outputs)
            if not checked:
                return i + 1, losses.write(i, loss), first_bad, bad_marks
            newly_bad = tf.logical_and(active, tf.reduce_max(bad) > 0.0)
            return (
                i + 1,
                losses.write(i, loss),
                tf.where(newly_bad, i, first_bad),
                tf.where(newly_bad, bad, bad_marks),
            )

        # A plain counter against a limit, the loop's only condition: XLA finds the trip count in it.
        start = (tf.constant(0), tf.TensorArray(tf.float32, size=size), tf.constant(-1), tf.zeros([self.num_replicas]))
        _, losses, first_bad, bad_marks = tf.while_loop(lambda i, *_: i < trip, body, start)
        if checked:
            return losses.stack(), first_bad, bad_marks
        first_copies = [local(v)[0] for v in self.model.weights]
        with tf.device(first_copies[0].device):
            return losses.stack(), stepmaths.finite_weights(first_copies)

    def _lean_call_fn(self, num_steps: tf.Tensor, *call_args: object) -> tuple[tf.Tensor, tf.Tensor]:
        """_call_fn's unchecked call without XLA, on TensorFlow's graph executor, where every node of every step
        is the executor's work beside the matmuls (docs/precision.md). The same steps and numbers, with less
        around them: the loop runs num_steps iterations (no trip count for XLA to find, so no step to mask and no
        branch around the step), carries only the losses, and each step is _lean_replica_step. Returns (losses
        [steps_per_loop], whether the weights it ends with are finite), as _call_fn."""
        local = self.strategy.experimental_local_results
        self._on_each_copy(self._call_start, self._state, stepmaths.assign_all)

        def body(i: tf.Tensor, losses: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            loss = self.strategy.run(self._lean_replica_step, args=self.input.step_args(call_args, i))
            return i + 1, losses.write(i, local(loss)[0])

        start = (tf.constant(0), tf.TensorArray(tf.float32, size=self.steps_per_loop))
        _, losses = tf.while_loop(lambda i, _: i < num_steps, body, start)
        first_copies = [local(v)[0] for v in self.model.weights]
        with tf.device(first_copies[0].device):
            return losses.stack(), stepmaths.finite_weights(first_copies)

    # --- host side -------------------------------------------------------------------------------------------

    def loss_scale_state(self) -> dict | None:
        """mixed_float16: the loss scale and the steps skipped so far (from the first replica); None otherwise."""
        if not self.loss_scale:
            return None
        first = self.strategy.experimental_local_results
        return {
            "loss_scale": float(first(self.loss_scale.scale)[0]),
            "skipped_steps": int(first(self.loss_scale.skipped)[0]),
        }

    def weights(self) -> list[np.ndarray]:
        """The trained values as numpy arrays, kernel_0, bias_0, ... (from the first replica)."""
        return [self.strategy.experimental_local_results(v)[0].numpy() for v in self.model.weights]

    def train(self, num_steps: int) -> np.ndarray:
        """One compiled call of num_steps (<= steps_per_loop) steps; returns their losses. When it ends with a
        non-finite loss or weight, the same steps run again from the call's start in the checked call, which
        names the first bad step and its replica (TrainingDiverged: the weights are then not to be saved)."""
        if not 0 < num_steps <= self.steps_per_loop:
            raise ValueError(f"a call runs 1 to {self.steps_per_loop} steps, not {num_steps}")
        count, call_args = tf.constant(num_steps), self.input.call_args(self.step, num_steps)
        losses = None
        if not self.checks_each_step:
            losses, finite = self._call(count, *call_args)
            losses = losses.numpy()[:num_steps]
            if not (bool(finite) and np.isfinite(losses).all()):
                self._on_each_copy(self._state, self._call_start, stepmaths.assign_all)
                losses = None
        if losses is None:
            losses, first_bad, marks = self._checked_call(count, *call_args)
            first_bad = int(first_bad)
            if first_bad >= 0:
                replica = int(np.flatnonzero(marks.numpy())[0])
                raise TrainingDiverged(self.step + first_bad, replica, float(losses[first_bad]))
            losses = losses.numpy()[:num_steps]
        self.step += num_steps
        if self.loss_scale is not None:
            skipped = int(self.strategy.experimental_local_results(self._loss_scale_state[-1])[0])
            if skipped >= MAX_SKIPPED_AT_SCALE_1:
                raise GradientsOverflowed(self.step - skipped, skipped)
        return losses

    def resume_at(self, step: int) -> None:
        """Puts the input where an uninterrupted run would be after `step` steps (after a checkpoint restore)."""
        self.step = step
        self.input.seek(step)

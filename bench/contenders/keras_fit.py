"""Keras `Model.fit` on the tutorial's tf.data pipeline, the same MLP initialised as distmnist initialises it:
at Keras's default settings, or tuned (steps_per_execution, XLA on one replica), in any of Keras's dtype policies."""

import time
import warnings

import numpy as np
import tensorflow as tf

from bench import timing as timing_lib
from distmnist.data.dataset import Mnist
from distmnist.training import LAYER_SIZES, inputs
from distmnist.training.trainer import TrainerSettings


def model(seed: int):
    """The same MLP in Keras, initialised as distmnist initialises it (uniform +-1/sqrt(fan_in))."""
    import keras

    layers = [keras.Input([LAYER_SIZES[0]])]
    for i, (fan_in, fan_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:], strict=True)):
        limit = 1 / np.sqrt(fan_in)
        layers.append(
            keras.layers.Dense(
                fan_out,
                activation="relu" if i < len(LAYER_SIZES) - 2 else None,
                kernel_initializer=keras.initializers.RandomUniform(-limit, limit, seed=seed + 2 * i),
                bias_initializer=keras.initializers.RandomUniform(-limit, limit, seed=seed + 2 * i + 1),
            )
        )
    return keras.Sequential(layers)


def compiled(
    strategy: tf.distribute.Strategy,
    learning_rate: float,
    seed: int,
    tuned: bool,
    steps_per_execution: int = 50,
    policy: str = "float32",
):
    """policy: Keras's global dtype policy while the model is built (mixed_float16 also wraps the optimizer in
    Keras's LossScaleOptimizer, which compile does itself)."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            made = model(seed)
            # Keras's XLA cannot reach variables on other replicas' devices: tuned means XLA on one replica only.
            jit = strategy.num_replicas_in_sync == 1
            extra = {"steps_per_execution": steps_per_execution, "jit_compile": jit} if tuned else {}
            optimizer = keras.optimizers.SGD(learning_rate)
            if policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            made.compile(optimizer=optimizer, loss="mse", **extra)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return made


def dataset(mnist: Mnist, global_batch_size: int, seed: int) -> tf.data.Dataset:
    return inputs.tfdata_pipeline(mnist.x_train, mnist.y_train, global_batch_size, 10000, seed)


def _fit(made, data, **kwargs):
    """model.fit without Keras's warning that a tf.data input is not shuffled again (ours is already)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shuffle=True. was passed", category=UserWarning)
        made.fit(data, **kwargs)


def examples_per_sec(
    mnist: Mnist, strategy: tf.distribute.Strategy, timing: timing_lib.Timing, tuned: bool, policy: str = "float32"
) -> float:
    """Keras Model.fit on the tutorial's pipeline: default settings, or tuned (steps_per_execution, XLA)."""
    made = compiled(strategy, timing.learning_rate, timing.seed, tuned, policy=policy)
    global_batch_size = timing.per_replica_batch_size * strategy.num_replicas_in_sync
    data = dataset(mnist, global_batch_size, timing.seed)

    def run_steps(n):
        _fit(made, data, epochs=1, steps_per_epoch=n, verbose=0)

    return timing_lib.examples_per_sec(run_steps, timing, global_batch_size)


def time_to_accuracy(mnist: Mnist, strategy, target: float, max_epochs: int, settings: TrainerSettings):
    """(seconds from the first step until the test accuracy, checked every epoch, reaches the target, or None;
    epochs; accuracy) for tuned Keras with distmnist's hyperparameters, initialisation and steps per epoch."""
    import keras

    global_batch_size = settings.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = len(mnist.x_train) // global_batch_size  # as distmnist: the partial batch dropped
    per_execution = max(k for k in range(1, 51) if steps_per_epoch % k == 0)  # must divide an epoch
    made = compiled(
        strategy,
        settings.learning_rate,
        settings.seed,
        tuned=True,
        steps_per_execution=per_execution,
        policy=settings.precision,
    )
    test_x = mnist.x_test.reshape(-1, LAYER_SIZES[0]).astype(np.float32) / 255.0
    reached = {}

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logits = self.model.predict(test_x, batch_size=2000, verbose=0)
            accuracy = float(np.mean(np.argmax(logits, axis=1) == mnist.y_test))
            reached.update(epoch=epoch + 1, accuracy=accuracy, seconds=time.perf_counter() - start)
            if accuracy >= target:
                self.model.stop_training = True

    data = dataset(mnist, global_batch_size, settings.seed)
    start = time.perf_counter()
    _fit(made, data, epochs=max_epochs, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=[Stop()])
    hit = reached["accuracy"] >= target
    return (reached["seconds"] if hit else None), reached["epoch"], reached["accuracy"]

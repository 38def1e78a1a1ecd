"""The tutorial's network: Dense 784-512-256-10 with ReLU (535,818 parameters). Its outputs are trained by MSE
towards one-hot targets: regression values, not logits (export.py turns them into calibrated probabilities).

A plain tf.Module: it runs unchanged under any tf.distribute strategy, exports as a portable SavedModel, and
its initialisation is a pure function of the seed (weights and biases uniform in +-1/sqrt(fan_in), which suits
MSE and plain SGD better than Glorot with zero biases; docs/design.md).
"""

from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from distmnist.training import LAYER_SIZES

NUM_CLASSES = 10


def images_to_features(images: tf.Tensor) -> tf.Tensor:
    """uint8 [N, 28, 28] pixels -> float32 [N, 784] in [0, 1], as the tutorial's preprocess."""
    return tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, LAYER_SIZES[0]])


def labels_to_targets(labels: tf.Tensor) -> tf.Tensor:
    """Integer labels [N] -> one-hot float32 [N, 10]."""
    return tf.one_hot(tf.cast(labels, tf.int32), NUM_CLASSES)


def forward(weights: Sequence[tf.Tensor], features: tf.Tensor, compute_dtype: tf.DType = tf.float32) -> tf.Tensor:
    """float32 outputs from [kernel_0, bias_0, kernel_1, ...] (variables or tensors) and features [N, 784].

    compute_dtype bfloat16 or float16 (mixed precision): the features and weights are cast to it, the matmuls,
    bias additions and ReLUs run in it, and the outputs come back as float32; the casts' gradients carry the
    weights' gradients back to float32."""
    low = compute_dtype != tf.float32
    h = tf.cast(features, compute_dtype) if low else features
    last = len(weights) // 2 - 1
    for i in range(last + 1):
        kernel, bias = weights[2 * i], weights[2 * i + 1]
        if low:
            kernel, bias = tf.cast(kernel, compute_dtype), tf.cast(bias, compute_dtype)
        h = tf.matmul(h, kernel)
        # The low types' BiasAdd: its gradient is one op (BiasAddGrad), and on the oneDNN path (CPUs with bfloat16
        # features, XLA off) TensorFlow runs it with the matmul and the ReLU as one fused kernel. float32 keeps its
        # add, whose gradient sums in another order outside XLA: float32's numbers stay bit for bit on every path.
        h = tf.nn.bias_add(h, bias) if low else h + bias
        if i < last:
            h = tf.nn.relu(h)
    return tf.cast(h, tf.float32) if low else h


class MLP(tf.Module):
    """Three dense layers; call it on float features [N, 784] for outputs [N, 10]."""

    def __init__(self, seed: int = 0, name: str = "mlp") -> None:
        super().__init__(name=name)
        self.kernels: list[tf.Variable] = []
        self.biases: list[tf.Variable] = []
        for i, (fan_in, fan_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:], strict=True)):
            limit = 1.0 / np.sqrt(fan_in)
            kernel = tf.random.stateless_uniform([fan_in, fan_out], [seed, 2 * i], -limit, limit)
            bias = tf.random.stateless_uniform([fan_out], [seed, 2 * i + 1], -limit, limit)
            self.kernels.append(tf.Variable(kernel, name=f"kernel_{i}"))
            self.biases.append(tf.Variable(bias, name=f"bias_{i}"))

    @property
    def weights(self) -> list[tf.Variable]:
        """Variables in a fixed order: kernel_0, bias_0, kernel_1, ..."""
        return [v for pair in zip(self.kernels, self.biases, strict=True) for v in pair]

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        return forward(self.weights, features)

    def set_numpy(self, values: Iterable[np.ndarray]) -> None:
        for variable, value in zip(self.weights, values, strict=True):
            variable.assign(value)

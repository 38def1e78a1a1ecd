"""The yardstick of the bench's whole-process section: the training `python -m distmnist.train` does at its
defaults, written as a Keras user would write it. It imports nothing of distmnist, so it runs as a plain script:

  python bench/keras_fit_script.py [--data=mnist.npz] [--epochs=10] [--steps=N]

The same model (784-512-256-10, ReLU, weights and biases uniform in +-1/sqrt(fan_in)), loss (MSE on one-hot
targets), optimiser (plain SGD, learning rate 1.5), batch (128), epochs (10) and data (MNIST from the Keras
cache, pixels / 255), with Keras `fit` at its defaults (shuffled every epoch), then `evaluate` on the test set.
The last line printed is `test accuracy <value>`.
"""

import argparse
import math

import numpy as np
import tensorflow as tf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an mnist.npz (default: keras.datasets.mnist, from the Keras cache)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the whole set)")
    args = parser.parse_args()

    if args.data:
        with np.load(args.data, allow_pickle=False) as f:
            (x_train, y_train), (x_test, y_test) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    else:
        (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data()
    x_train = x_train.reshape(len(x_train), 784).astype(np.float32) / 255.0
    x_test = x_test.reshape(len(x_test), 784).astype(np.float32) / 255.0
    y_train, y_test = tf.keras.utils.to_categorical(y_train, 10), tf.keras.utils.to_categorical(y_test, 10)

    tf.keras.utils.set_random_seed(42)
    layers = [tf.keras.Input(shape=(784,))]
    for fan_in, units, activation in ((784, 512, "relu"), (512, 256, "relu"), (256, 10, None)):
        init = tf.keras.initializers.RandomUniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        layers.append(
            tf.keras.layers.Dense(units, activation=activation, kernel_initializer=init, bias_initializer=init)
        )
    model = tf.keras.Sequential(layers)
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=1.5), loss="mse", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, steps_per_epoch=args.steps, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()

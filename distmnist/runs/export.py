"""The SavedModel: raw uint8 MNIST pixels in; the network's outputs, calibrated logits, probabilities and classes
out.

A plain tf.Module with an explicit signature, so it loads with tf.saved_model.load anywhere, with no strategy
and no distmnist import; the preprocessing and the calibration temperature live inside it.
"""

import os

import numpy as np
import tensorflow as tf

import distmnist
from distmnist.common import files, logfilters
from distmnist.runs import calibration, outputs
from distmnist.training.model import MLP, images_to_features


class Classifier(tf.Module):
    """Wraps trained weights and a temperature with the serving signature:

    outputs        the network's raw outputs (trained by MSE towards one-hot targets: regression values near 0
                   and 1, not logits)
    logits         outputs / temperature: logits in the proper sense, softmax(logits) == probabilities
    probabilities  calibrated class probabilities (temperature scaling, see calibration.py)
    classes        the most likely digit (the same for any temperature)
    """

    def __init__(self, weights: list[np.ndarray], temperature: float = 1.0) -> None:
        super().__init__(name="distmnist_classifier")
        self.mlp = MLP()
        self.mlp.set_numpy(weights)
        self.temperature = tf.Variable(temperature, dtype=tf.float32, trainable=False, name="temperature")

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")], autograph=False)
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self.mlp(images_to_features(images))
        logits = outputs / self.temperature
        return {
            "outputs": outputs,
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(outputs, axis=-1, output_type=tf.int64),
        }

    def fit_temperature(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fits and keeps the temperature that calibrates the probabilities on (images, labels); returns it."""
        outputs = self.serve(tf.constant(images))["outputs"].numpy()
        temperature = calibration.fit_temperature(outputs, labels)
        self.temperature.assign(temperature)
        return temperature


def save(classifier: Classifier, path: str, legacy: bool = False) -> None:
    """Writes the SavedModel to `path`: a folder atomically (a temporary folder renamed into place, with the marker
    that makes it distmnist's to replace later), replacing only nothing, an empty folder or an export of
    distmnist's (legacy: one without the marker too, as in run directories before it; FileExistsError otherwise);
    a tf.io.gfile URL (gs://, Vertex AI's AIP_MODEL_DIR) directly."""

    def write(target: str) -> None:
        tf.saved_model.save(classifier, target, signatures={"serving_default": classifier.serve})

    def write_marked(target: str) -> None:
        write(target)
        files.write_json(
            os.path.join(target, outputs.EXPORT_MARKER), {"written_by": f"distmnist {distmnist.__version__}"}
        )

    with logfilters.absl_warnings_only():
        if files.is_url(path):
            write(path)
        else:
            files.replace_dir(path, write_marked, lambda p: outputs.is_replaceable_export(p, legacy))

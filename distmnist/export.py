"""The SavedModel: raw uint8 MNIST pixels in, logits, probabilities and classes out.

A plain tf.Module with an explicit signature, so it loads with tf.saved_model.load anywhere, with no strategy
and no distmnist import; the preprocessing lives inside it.
"""

import tensorflow as tf

from distmnist import files, tfquiet
from distmnist.model import MLP, images_to_features


class Classifier(tf.Module):
    """Wraps trained weights with the serving signature."""

    def __init__(self, weights):
        super().__init__(name="distmnist_classifier")
        self.mlp = MLP()
        self.mlp.set_numpy(weights)

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def serve(self, images):
        logits = self.mlp(images_to_features(images))
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int64),
        }


def export_saved_model(weights, path: str) -> Classifier:
    """Writes the SavedModel to `path` atomically (a temporary folder renamed into place)."""
    classifier = Classifier(weights)
    with tfquiet.absl_warnings_only():
        files.replace_dir(path, lambda tmp: tf.saved_model.save(
            classifier, tmp, signatures={"serving_default": classifier.serve}))
    return classifier

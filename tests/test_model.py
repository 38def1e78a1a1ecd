import numpy as np
import tensorflow as tf

from distmnist.training.model import MLP, images_to_features, labels_to_targets

from helpers import model_weights, parameter_count


def test_parameter_count_and_shapes():
    model = MLP(seed=1)
    assert parameter_count(model) == 535_818
    assert [tuple(v.shape) for v in model.weights] == [(784, 512), (512,), (512, 256), (256,), (256, 10), (10,)]
    assert model(tf.zeros([3, 784])).shape == (3, 10)


def test_initialisation_is_uniform_in_one_over_sqrt_fan_in_and_seeded():
    a, b, c = model_weights(MLP(seed=7)), model_weights(MLP(seed=7)), model_weights(MLP(seed=8))
    for i, fan_in in enumerate((784, 784, 512, 512, 256, 256)):
        limit = 1 / np.sqrt(fan_in)
        assert np.abs(a[i]).max() <= limit
        assert np.abs(a[i]).max() > 0.95 * limit  # spread over the whole range, biases included
        np.testing.assert_array_equal(a[i], b[i])
        assert not np.array_equal(a[i], c[i])


def test_preprocessing_matches_the_tutorial():
    images = np.array([[[0, 255] * 14] * 28], np.uint8)
    features = images_to_features(images).numpy()
    assert features.shape == (1, 784) and features.dtype == np.float32
    np.testing.assert_array_equal(features[0, :4], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(labels_to_targets(np.array([3], np.uint8)).numpy(), [np.eye(10)[3]])


"""The SavedModel reproduces the in-memory model exactly, in a fresh process with no distmnist import."""

import os

import numpy as np
import pytest
import tensorflow as tf

from distmnist.training.model import MLP, images_to_features
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer

from helpers import export_saved_model, run_python, run_schedule, trainer_settings


@pytest.mark.slow
def test_reloaded_model_matches_the_trained_one_exactly(tmp_path, tiny_mnist):
    trainer = Trainer(trainer_settings(batch_size=32), make_strategy(cpu_replicas=2).strategy, tiny_mnist)
    run_schedule(trainer, tiny_mnist, 10)
    trained_logits = trainer.model(images_to_features(tiny_mnist.x_test)).numpy()

    path = tmp_path / "saved_model"
    classifier = export_saved_model(trainer.weights(), str(path), temperature=0.1)
    in_memory = {k: v.numpy() for k, v in classifier.serve(tf.constant(tiny_mnist.x_test)).items()}
    np.save(tmp_path / "images.npy", tiny_mnist.x_test)
    result = run_python(f"""
import sys, numpy as np, tensorflow as tf
model = tf.saved_model.load({str(path)!r})
serve = model.signatures["serving_default"]
spec = serve.structured_input_signature[1]["images"]
assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 28, 28], spec
out = serve(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})
assert "distmnist" not in sys.modules
""")
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert set(out) == {"outputs", "logits", "probabilities", "classes"}
    for key in out:
        np.testing.assert_array_equal(out[key], in_memory[key])  # bit for bit, the temperature included
    # The trainer's eager, strategy-placed model agrees up to the rounding of fused kernels.
    np.testing.assert_allclose(out["outputs"], trained_logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["logits"], out["outputs"] / 0.1, rtol=1e-6)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(out["logits"]).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["classes"], np.argmax(trained_logits, axis=1))
    assert out["classes"].dtype == np.int64 and out["probabilities"].dtype == np.float32


def test_an_export_that_fails_half_way_leaves_the_previous_one_whole(tmp_path, tiny_mnist, monkeypatch):
    rng = np.random.default_rng(0)
    old = [rng.normal(size=v.shape).astype(np.float32) for v in MLP().weights]
    new = [w + 1 for w in old]
    path = tmp_path / "saved_model"
    export_saved_model(old, str(path))
    before = tf.saved_model.load(str(path))
    expected = before.serve(tf.constant(tiny_mnist.x_test))["logits"].numpy()

    real_save = tf.saved_model.save

    def crash_after_writing(obj, export_dir, **kwargs):
        real_save(obj, export_dir, **kwargs)  # the new model is complete in the temporary folder...
        raise OSError("disk full")  # ...and the process fails before it is swapped in

    monkeypatch.setattr(tf.saved_model, "save", crash_after_writing)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(new, str(path))
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]  # no temporary folder left behind
    after = tf.saved_model.load(str(path))
    reloaded = after.serve(tf.constant(tiny_mnist.x_test))["logits"].numpy()
    np.testing.assert_array_equal(reloaded, expected)  # the complete old model


@pytest.mark.slow  # trains and exports a model
def test_a_float32_pass_keeps_within_the_rounding_bound_the_gpu_comparison_uses(tmp_path, tiny_mnist):
    """tests/rounding.py's bound, which test_gpu.py allows (twice) between a GPU's answers and a CPU's, holds here:
    the SavedModel's float32 outputs against the exact ones (float64, same weights), and XLA's pass (other sums,
    other order) against TensorFlow's. And it is no blanket: a change the size of a TF32 rounding breaks it."""
    from helpers import saved_weights
    from rounding import forward_and_bound

    trainer = Trainer(trainer_settings(batch_size=32), make_strategy().strategy, tiny_mnist)
    run_schedule(trainer, tiny_mnist, 20)
    classifier = export_saved_model(trainer.weights(), str(tmp_path / "saved_model"))
    images = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    exact, bound = forward_and_bound(saved_weights(tmp_path), images)
    outputs = classifier.serve(tf.constant(images))["outputs"].numpy().astype(np.float64)
    assert np.all(np.abs(outputs - exact) <= bound)
    jit = tf.function(lambda x: classifier.mlp(images_to_features(x)), jit_compile=True)(tf.constant(images))
    assert np.all(np.abs(jit.numpy() - outputs) <= 2 * bound)
    # TF32 keeps 10 of float32's 23 mantissa bits in a matmul's inputs: the first layer's relative error 2**-11.
    coarse = tf.cast(tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(images_to_features(tf.constant(images)), tf.int32),
                                                       tf.constant(~0x1FFF, tf.int32)), tf.float32), tf.float32)
    truncated = classifier.mlp(coarse).numpy().astype(np.float64)
    assert np.any(np.abs(truncated - exact) > bound)

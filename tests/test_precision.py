"""Mixed precision (--precision): bfloat16 and float16 matmuls and activations around float32 weights, loss and
update; float16 with dynamic loss scaling. What each precision must keep of float32's guarantees, with tolerances
derived from the types' unit roundoff (docs/precision.md)."""

import dataclasses
import json
import math
import platform

import numpy as np
import pytest
import tensorflow as tf

from distmnist.common.config import TrainConfig
from distmnist.common.errors import GradientsOverflowed, TrainingDiverged, UserError
from distmnist.runs import rundir
from distmnist.runs.checkpoints import Checkpointer
from distmnist.training import devices, inputs
from distmnist.training.model import forward, images_to_features
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import INITIAL_LOSS_SCALE, MAX_SKIPPED_AT_SCALE_1, Trainer, run_steps

import helpers
from helpers import evaluator, make_tiny_mnist, model_weights, run_module, run_python, trainer_settings

MIXED = ("mixed_bfloat16", "mixed_float16")
ROUNDINGS = 12  # the most roundings to the low type between the pixels and a weight's gradient: 4 per layer
UNIT_ROUNDOFF = {"float32": 2.0**-24, "mixed_bfloat16": 2.0**-8, "mixed_float16": 2.0**-11}
LOW_TYPES = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}
SIGMAS = 6  # a rounding error beyond 6 standard deviations of the model below: odds under 1e-8 an output


def rounding_sigma(precision: str, features: np.ndarray, weights: list) -> np.ndarray:
    """Per output of forward(weights, features, low type), the standard deviation of its difference from the exact
    (float64) outputs, in float64. Each rounding to the type is an error of variance at most u^2 v^2 / 3 (round to
    nearest: within +-u|v|, uniform), independent of the others: the pixels, every weight and bias, every matmul
    output and bias addition; the products are exact and summed in float32 or better (whose errors, 2^-24 relative,
    are left out); a ReLU passes an error where it passes its value. The errors then add up in variance through the
    layers (Higham, Accuracy and Stability of Numerical Algorithms, 2.8: the statistical estimate)."""
    u2_3 = UNIT_ROUNDOFF[precision] ** 2 / 3
    h = features.astype(np.float64)
    var = u2_3 * h**2
    for i in range(len(weights) // 2):
        kernel, bias = weights[2 * i].astype(np.float64), weights[2 * i + 1].astype(np.float64)
        z = h @ kernel
        var = var @ kernel**2 + u2_3 * (h**2 @ kernel**2 + z**2 + bias**2 + (z + bias) ** 2)
        h = z + bias
        if i < len(weights) // 2 - 1:
            var, h = np.where(h > 0, var, 0.0), np.maximum(h, 0.0)
    return np.sqrt(var)


def exact_forward(weights: list, features: np.ndarray) -> np.ndarray:
    h = features.astype(np.float64)
    for i in range(len(weights) // 2):
        h = h @ weights[2 * i].astype(np.float64) + weights[2 * i + 1].astype(np.float64)
        if i < len(weights) // 2 - 1:
            h = np.maximum(h, 0.0)
    return h


@pytest.fixture(scope="module")
def mnist():
    return make_tiny_mnist(num_train=2048, num_test=203)


def trained(mnist, precision, replicas=1, steps=20, **settings):
    trainer = Trainer(
        trainer_settings(precision=precision, **{"batch_size": 64 // replicas, **settings}),
        make_strategy(cpu_replicas=replicas).strategy,
        mnist,
    )
    losses = run_steps(trainer, steps)
    return trainer, losses


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.weights(), b.weights(), strict=True))


@pytest.mark.parametrize("precision", MIXED)
def test_the_forward_pass_runs_in_the_low_precision_and_answers_in_float32(precision):
    """Every matmul of the traced forward pass is in the low type, the outputs float32, and they differ from the
    exact outputs as the type's roundings make them differ (rounding_sigma): every output within SIGMAS standard
    deviations, and their root mean square within one and a half (the model's variance is an upper bound). The
    other mixed type's outputs, or float32's, fail this: the bound tells the types apart."""
    rng = np.random.default_rng(0)
    weights = [
        rng.uniform(-0.05, 0.05, s).astype(np.float32)
        for s in ((784, 512), (512,), (512, 256), (256,), (256, 10), (10,))
    ]
    features = rng.uniform(0, 1, (32, 784)).astype(np.float32)
    low = LOW_TYPES[precision]
    graph = (
        tf.function(lambda x: forward(weights, x, low))
        .get_concrete_function(tf.TensorSpec([None, 784], tf.float32))
        .graph
    )
    assert {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"} == {low}
    exact = exact_forward(weights, features)
    sigma = rounding_sigma(precision, features, weights)

    def deviations(dtype):
        outputs = forward(weights, tf.constant(features), dtype)
        assert outputs.dtype == tf.float32
        return (outputs.numpy() - exact) / sigma

    z = deviations(low)
    assert np.abs(z).max() < SIGMAS and 0.1 < np.sqrt(np.mean(z**2)) < 1.5
    other = LOW_TYPES[next(p for p in MIXED if p != precision)]
    assert (np.abs(deviations(other)).max() > SIGMAS) == (precision == "mixed_float16")  # bfloat16's: 8x float16's
    assert np.sqrt(np.mean(deviations(tf.float32) ** 2)) < 0.1  # float32 is no rounding of the type at all


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("jit", [False, True])
def test_the_training_images_are_resident_in_the_low_type_and_change_no_number(mnist, precision, jit):
    """The forward pass's first op casts the pixels to the low type, so they are kept in it on the device: half the
    bytes, one op a step fewer. The steps' losses and weights are bit for bit those of float32-resident images."""
    low = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}[precision]
    settings = trainer_settings(batch_size=32, precision=precision, jit_compile=jit)
    resident, as_float32 = (Trainer(settings, make_strategy().strategy, mnist) for _ in range(2))
    assert resident.strategy.experimental_local_results(resident.input.features)[0].dtype == low
    as_float32.input.features = inputs.on_each_replica(
        as_float32.strategy, lambda r, n: images_to_features(mnist.x_train)
    )
    np.testing.assert_array_equal(run_steps(resident, 12), run_steps(as_float32, 12))
    for a, b in zip(model_weights(resident.model), model_weights(as_float32.model), strict=True):
        np.testing.assert_array_equal(a, b)


# Trains two steps outside XLA; TF_DUMP_GRAPH_PREFIX has TensorFlow write each function's graph as it runs it.
TRAIN_TWO_STEPS = """
import numpy as np
from distmnist.data.dataset import Mnist
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer, TrainerSettings
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (256, 28, 28), np.uint8), rng.integers(0, 10, 256).astype(np.uint8)
settings = TrainerSettings(batch_size=32, learning_rate=1.5, seed=42, steps_per_loop=2, shuffle_buffer=10000,
                           input="device", jit_compile=False, total_steps=None, precision={precision!r},
                           loss_scale_growth_steps=2000, streams=1)
Trainer(settings, make_strategy().strategy, Mnist(x, y, x[:32], y[:32], "random")).train(2)
"""


def matmuls_as_run(tmp_path, precision: str, env: dict, unset=()) -> list:
    """The matmuls of the training call as TensorFlow runs it outside XLA, after its graph rewrites (grappler's
    fusions, oneDNN's kernels): (op, type, fused ops) for each, from the graphs TensorFlow dumps."""
    from google.protobuf import text_format

    result = run_python(
        TRAIN_TWO_STEPS.format(precision=precision),
        env={**env, "TF_DUMP_GRAPH_PREFIX": str(tmp_path), "TF_DUMP_GRAPH_NAME_FILTER": "*"},
        unset=unset,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = []
    for path in tmp_path.glob("*_partition_*after_partition_passes.pbtxt"):  # as the executor gets it
        graph = text_format.Parse(path.read_text(), tf.compat.v1.GraphDef())
        found += [
            (node.op, tf.as_dtype(node.attr["T"].type).name, tuple(op.decode() for op in node.attr["fused_ops"].list.s))
            for node in graph.node
            if "MatMul" in node.op
        ]
    return sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_with_onednn_every_matmul_of_the_step_is_onednns_and_the_layers_are_fused(tmp_path, precision):
    """What a CPU with amx_bf16 or avx512_bf16 runs for a mixed precision (docs/precision.md): outside XLA,
    TensorFlow's oneDNN kernels take all 8 matmuls of the step (3 forward, 5 backward) in the step's type, each
    forward one fused with its bias and ReLU. bfloat16 where the CPU has the features, TensorFlow's oneDNN default
    as a user's shell has it; float32, with oneDNN switched on, checks the same reading on any x86 CPU."""
    if precision == "float32":
        env, unset = {"TF_ENABLE_ONEDNN_OPTS": "1"}, ()
    elif devices.precision_support(devices.cpu_flags(), []).native[precision]:
        env, unset = {}, ("TF_ENABLE_ONEDNN_OPTS",)
    else:
        pytest.skip("bfloat16 goes through oneDNN only on CPUs with amx_bf16 or avx512_bf16")
    matmuls = matmuls_as_run(tmp_path, precision, env, unset)
    dtype = "float32" if precision == "float32" else "bfloat16"
    assert len(matmuls) == 8 and all(op.startswith("_Mkl") and t == dtype for op, t, _ in matmuls), matmuls
    assert sorted(fused for _, _, fused in matmuls if fused) == [
        ("BiasAdd",),
        ("BiasAdd", "Relu"),
        ("BiasAdd", "Relu"),
    ], matmuls


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_a_short_run_learns_as_float32_does(mnist, precision):
    """150 steps on tiny data: the loss falls as float32's does, within the type's rounding of it (each step's loss
    is an average whose terms carry the forward pass's n*u error), and the test accuracy lands within 3 images of
    203 of float32's."""
    reference, ref_losses = trained(mnist, "float32", steps=150, learning_rate=0.5)
    low, losses = trained(mnist, precision, steps=150, learning_rate=0.5)
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    assert abs(losses[0] - ref_losses[0]) < first_loss_bound(mnist, precision, reference.settings.seed, 64)
    assert abs(evaluator(low, mnist).evaluate()[0] - evaluator(reference, mnist).evaluate()[0]) <= 3 / 203


def first_loss_bound(mnist, precision: str, seed: int, batch_size: int, examples: int = None) -> float:
    """How far the first step's loss (a mean of squared errors over a batch of the training set, from the initial
    weights) may be from float32's: the loss moves by sum(2 (o - t) d) / (10 B) for output errors d of standard
    deviation sigma (rounding_sigma), to first order; SIGMAS of that deviation, with the batch taken as the
    worst of the training set's first `examples` (all of them by default), and the second-order mean of d^2."""
    from distmnist.training.model import MLP, images_to_features, labels_to_targets

    weights = model_weights(MLP(seed=seed))
    features = images_to_features(mnist.x_train[:examples]).numpy()
    outputs, targets = exact_forward(weights, features), labels_to_targets(mnist.y_train[:examples]).numpy()
    sigma = rounding_sigma(precision, features, weights)
    per_example = np.sum((outputs - targets) ** 2 * sigma**2, axis=1)  # each example's share of the variance
    worst = np.sort(per_example)[-batch_size:].sum()
    return float(SIGMAS * 2 * np.sqrt(worst) / (10 * batch_size) + np.max(sigma) ** 2)


@pytest.mark.parametrize("precision", MIXED)
def test_the_first_loss_bound_tells_a_loss_taken_in_the_low_type_apart(mnist, precision):
    """The bound of test_a_short_run_learns_as_float32_does, against the first batch's loss computed as the trainer
    computes it, and as it would be if the loss itself were taken in the low type (outputs and mean): the first
    passes, the second does not (the bound that allowed 784 u, three times the loss in bfloat16, passed both)."""
    from distmnist.training import stepmaths
    from distmnist.training.model import MLP, images_to_features, labels_to_targets

    weights = model_weights(MLP(seed=42))
    features, targets = images_to_features(mnist.x_train[:64]), labels_to_targets(mnist.y_train[:64])
    low = LOW_TYPES[precision]
    bound = first_loss_bound(mnist, precision, 42, 64, examples=64)  # the batch itself: its worst 64 of 64
    reference = float(stepmaths.mse_loss(targets, forward(weights, features), 64))
    mixed = float(stepmaths.mse_loss(targets, forward(weights, features, low), 64))
    in_the_low_type = float(
        tf.cast(
            stepmaths.mse_loss(tf.cast(targets, low), tf.cast(forward(weights, features, low), low), 64), tf.float32
        )
    )
    assert abs(mixed - reference) < bound < abs(in_the_low_type - reference)


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_the_replica_count_changes_only_the_low_precision_rounding(mnist, precision):
    """1 replica x 64 and 2 x 32 train on the same examples; what differs is where the low type rounds (each
    replica's weight gradient, a sum over its 32 examples, is rounded to the type before the float32 all-reduce,
    and matmuls of another shape may round their outputs differently; both accumulate in float32). Between the
    pixels and a weight's gradient a value is rounded to the type at most ROUNDINGS times (per layer: the matmul's
    output and the bias addition forward, two products backward), each by at most u relative, so a step's gradient
    entry differs by at most ROUNDINGS x u x |g|max between the runs (first order), and after 5 steps a weight by
    2 x 5 x learning_rate x ROUNDINGS x u x |g|max (|g|max: the largest gradient entry at the first or the last
    step). A loss wrongly averaged per replica is caught by the same bound."""
    from distmnist.training import stepmaths

    one, _ = trained(mnist, precision, replicas=1, steps=5, jit_compile=False)
    two, _ = trained(mnist, precision, replicas=2, steps=5, jit_compile=False)
    features = tf.cast(tf.reshape(mnist.x_train[:2048], [2048, 784]), tf.float32) / 255.0
    targets = tf.one_hot(mnist.y_train[:2048].astype(np.int32), 10)
    fresh = Trainer(trainer_settings(batch_size=64), make_strategy().strategy, mnist)
    largest = 0.0
    for weights in (fresh.weights(), one.weights()):
        for start in range(0, 2048, 64):
            grads, _ = stepmaths.gradients(
                [tf.constant(w) for w in weights], features[start : start + 64], targets[start : start + 64], 64
            )
            largest = max(largest, max(float(np.abs(g).max()) for g in grads))
    bound = 2 * 5 * 1.5 * ROUNDINGS * UNIT_ROUNDOFF[precision] * largest
    assert max_difference(one, two) < bound

    def per_replica_mean(targets, outputs, global_batch_size):
        return tf.reduce_mean(tf.square(targets - outputs))  # wrong: ignores the other replicas

    wrong_one = Trainer(
        trainer_settings(batch_size=64, precision=precision, jit_compile=False),
        make_strategy().strategy,
        mnist,
        loss_fn=per_replica_mean,
    )
    wrong_two = Trainer(
        trainer_settings(batch_size=32, precision=precision, jit_compile=False),
        make_strategy(cpu_replicas=2).strategy,
        mnist,
        loss_fn=per_replica_mean,
    )
    run_steps(wrong_one, 5)
    run_steps(wrong_two, 5)
    assert max_difference(wrong_one, wrong_two) > bound


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_the_losses_do_not_depend_on_steps_per_loop(mnist, precision):
    """Without XLA every step runs the same kernels whatever the call's length, so 1, 7 and 50 steps per call give
    the same 70 losses and weights, bit for bit, in each precision (the float16 loss scale's state included)."""
    runs = [
        trained(
            mnist, precision, steps=70, batch_size=32, steps_per_loop=k, jit_compile=False, loss_scale_growth_steps=20
        )
        for k in (1, 7, 50)
    ]
    for trainer, losses in runs[1:]:
        np.testing.assert_array_equal(losses, runs[0][1])
        assert max_difference(trainer, runs[0][0]) == 0.0
        assert trainer.loss_scale_state() == runs[0][0].loss_scale_state()


def huge(targets, outputs, global_batch_size):
    """A loss 1000 times too large: its float16 gradients overflow at the initial loss scale."""
    return 1e3 * tf.reduce_sum(tf.square(targets - outputs)) / global_batch_size


def copies(trainer, variables) -> list:
    """Every replica's copy of each variable, as numpy arrays: [[replica 0's, replica 1's, ...], ...]."""
    return [[c.numpy() for c in trainer.strategy.experimental_local_results(v)] for v in variables]


def assert_replicas_agree(trainer) -> None:
    """Every replica holds the same weights and loss scale state, bit for bit."""
    for values in copies(trainer, trainer._state):
        for other in values[1:]:
            np.testing.assert_array_equal(values[0], other)


@pytest.mark.parametrize("input_path", ["device", pytest.param("tfdata", marks=pytest.mark.slow)])
def test_a_planted_overflow_skips_the_step_and_halves_the_scale_on_every_replica(mnist, input_path):
    """huge overflows float16's gradients at the initial scale: the step changes no weight and halves the scale, on
    both replicas, and the run goes on; once the scale is small enough, it trains. Over tf.data every call is the
    checked one, where an overflow must still skip, not diverge."""
    trainer = Trainer(
        trainer_settings(batch_size=32, precision="mixed_float16", learning_rate=1e-12, input=input_path),
        make_strategy(cpu_replicas=2).strategy,
        mnist,
        loss_fn=huge,
    )
    before = trainer.weights()
    run_steps(trainer, 1)
    assert trainer.loss_scale_state() == {"loss_scale": INITIAL_LOSS_SCALE / 2, "skipped_steps": 1}
    for a, b in zip(before, trainer.weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert copies(trainer, [trainer.loss_scale.scale]) == [[INITIAL_LOSS_SCALE / 2] * 2]
    assert_replicas_agree(trainer)
    run_steps(trainer, 30)  # halves until the scaled gradients fit, then trains
    state = trainer.loss_scale_state()
    assert 1 < state["skipped_steps"] < 31 and state["loss_scale"] == INITIAL_LOSS_SCALE / 2 ** state["skipped_steps"]
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, trainer.weights(), strict=True)) > 0
    assert_replicas_agree(trainer)


@pytest.mark.parametrize("input_path", ["device", pytest.param("tfdata", marks=pytest.mark.slow)])
def test_an_overflow_on_one_replica_skips_the_step_on_every_replica(mnist, input_path):
    """Only replica 1's gradients overflow (its loss is huge's): both replicas skip the step and halve the scale,
    their weights stay equal and as they were; once the scale fits replica 1's gradients, both train, alike. A
    replica that applied its step while the other skipped would leave the copies apart."""

    def huge_on_replica_1(targets, outputs, global_batch_size):
        factor = tf.where(tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 1), 1e3, 1.0)
        return factor * tf.reduce_sum(tf.square(targets - outputs)) / global_batch_size

    trainer = Trainer(
        trainer_settings(
            batch_size=32, precision="mixed_float16", learning_rate=1e-3, input=input_path, jit_compile=False
        ),  # a replica's id is a constant of its own trace
        make_strategy(cpu_replicas=2).strategy,
        mnist,
        loss_fn=huge_on_replica_1,
    )
    before = trainer.weights()
    run_steps(trainer, 1)
    assert copies(trainer, [trainer.loss_scale.scale, trainer.loss_scale.skipped]) == [
        [INITIAL_LOSS_SCALE / 2] * 2,
        [1.0, 1.0],
    ]
    for weight, copy in zip(before, copies(trainer, trainer.model.weights), strict=True):
        for value in copy:
            np.testing.assert_array_equal(value, weight)
    run_steps(trainer, 20)
    assert 1 < trainer.loss_scale_state()["skipped_steps"] < 21
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, trainer.weights(), strict=True)) > 0
    assert_replicas_agree(trainer)


def overflowing_at_any_scale(targets, outputs, global_batch_size):
    """A loss whose float16 gradients overflow even at scale 1 (its gradient by the outputs is about 3e7, float16's
    largest number 65504), while the loss itself, in float32, is finite."""
    return 1e9 * tf.reduce_sum(tf.square(targets - outputs)) / global_batch_size


@pytest.mark.parametrize(
    "input_path, replicas",
    [
        ("device", 1),
        pytest.param("device", 2, marks=pytest.mark.slow),
        pytest.param("tfdata", 1, marks=pytest.mark.slow),
    ],
)
def test_skipping_step_after_step_at_loss_scale_1_stops_as_a_divergence(mnist, input_path, replicas):
    """The scale halves from 2^15 to 1 in 15 skipped steps; then no halving can help, and MAX_SKIPPED_AT_SCALE_1
    steps skipped in a row at scale 1 end the run (GradientsOverflowed, a divergence), instead of a run that trains
    nothing to its end. The weights are still the initial ones."""
    trainer = Trainer(
        trainer_settings(
            batch_size=32 // replicas, precision="mixed_float16", steps_per_loop=5, input=input_path, jit_compile=False
        ),
        make_strategy(cpu_replicas=replicas).strategy,
        mnist,
        loss_fn=overflowing_at_any_scale,
    )
    before = trainer.weights()
    with pytest.raises(GradientsOverflowed) as caught:
        run_steps(trainer, 1000)
    assert isinstance(caught.value, TrainingDiverged)
    assert (caught.value.step, caught.value.skipped) == (15, MAX_SKIPPED_AT_SCALE_1)
    assert str(caught.value) == (
        "the float16 gradients overflowed at loss scale 1 in 100 steps in a row from step "
        "15 on, each one skipped: nothing was learned; lower --learning_rate, or train with "
        "--precision=mixed_bfloat16 or float32"
    )
    assert trainer.step == 115 and trainer.loss_scale_state() == {"loss_scale": 1.0, "skipped_steps": 115}
    for a, b in zip(before, trainer.weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert_replicas_agree(trainer)


@pytest.mark.slow  # a run's set-up, and 115 steps
def test_a_run_that_skips_every_step_at_scale_1_keeps_its_last_checkpoint_and_exports_nothing(tmp_path, mnist):
    """The run's side of GradientsOverflowed, as of a divergence: one line naming what was kept, exit status 1,
    the last checkpoint (every 50 steps) the latest, no SavedModel, no run.json."""
    from distmnist.runs.run import train
    from distmnist.runs.runsetup import set_up

    config = TrainConfig(
        logdir=str(tmp_path),
        run_name="r",
        precision="mixed_float16",
        max_steps=1000,
        batch_size=16,
        steps_per_loop=5,
        checkpoint_every=50,
        jit_compile=False,
    )
    run = set_up(config, make_strategy(), mnist)
    run.trainer = Trainer(run.trainer.settings, run.choice.strategy, mnist, loss_fn=overflowing_at_any_scale)
    run.checkpointer = Checkpointer(run.trainer, run.run_dir, config.keep_checkpoints)
    with pytest.raises(GradientsOverflowed) as caught:
        train(run)
    assert caught.value.exit_status == 1
    assert str(caught.value) == (
        "the float16 gradients overflowed at loss scale 1 in 100 steps in a row from step "
        "15 on, each one skipped: nothing was learned; the checkpoint of step 100 stays the "
        "latest, nothing exported; lower --learning_rate, or train with "
        "--precision=mixed_bfloat16 or float32"
    )
    assert tf.train.latest_checkpoint(str(tmp_path / "r" / "checkpoints")).endswith("ckpt-100")
    assert not (tmp_path / "r" / "saved_model").exists() and not (tmp_path / "r" / "run.json").exists()


@pytest.mark.slow  # 400 steps
def test_good_steps_between_skipped_ones_at_scale_1_keep_the_run_going(mnist):
    """Only steps skipped in a row end a run: here the gradients overflow at any scale on the batches whose first
    example is a digit below 5, about every other batch; far more than MAX_SKIPPED_AT_SCALE_1 steps are skipped
    at scale 1 in all, and the run trains on."""
    from distmnist.training.stepmaths import mse_loss

    def overflowing_on_some_batches(targets, outputs, global_batch_size):
        return tf.where(tf.argmax(targets[0]) < 5, 1e9, 1.0) * mse_loss(targets, outputs, global_batch_size)

    trainer = Trainer(
        trainer_settings(batch_size=32, precision="mixed_float16", learning_rate=0.5, jit_compile=False),
        make_strategy().strategy,
        mnist,
        loss_fn=overflowing_on_some_batches,
    )
    run_steps(trainer, 400)
    state = trainer.loss_scale_state()
    assert state["loss_scale"] == 1.0 and MAX_SKIPPED_AT_SCALE_1 < state["skipped_steps"] < 300


@pytest.mark.parametrize(
    "input_path, replicas",
    [
        ("device", 1),
        pytest.param("device", 2, marks=pytest.mark.slow),
        pytest.param("tfdata", 2, marks=pytest.mark.slow),
    ],
)
def test_a_divergence_after_skipped_steps_rolls_the_loss_scale_back_with_the_weights(mnist, input_path, replicas):
    """huge's gradients overflow at the first scales (skipped steps), then at learning rate 1.5 they blow the
    weights up and the loss becomes infinite: the run diverges at that step, and the weights and every replica's
    loss scale state (the scale, the good steps, the steps skipped, those skipped at scale 1) are those of a run of
    exactly the steps before it: the call's steps are rolled back, then replayed with the checks."""

    def trainer():
        return Trainer(
            trainer_settings(
                batch_size=32 // replicas,
                precision="mixed_float16",
                learning_rate=1.5,
                input=input_path,
                jit_compile=False,
            ),
            make_strategy(cpu_replicas=replicas).strategy,
            mnist,
            loss_fn=huge,
        )

    diverging = trainer()
    with pytest.raises(TrainingDiverged) as caught:
        run_steps(diverging, 50)
    assert type(caught.value) is TrainingDiverged and diverging.step == 0
    diverged_at = caught.value.step
    assert 1 < diverged_at < 50 and not math.isfinite(caught.value.loss)
    good = trainer()
    run_steps(good, diverged_at)
    skipped = good.loss_scale_state()["skipped_steps"]
    assert 0 < skipped < diverged_at  # it skipped steps, then trained, before diverging
    for mine, theirs in zip(copies(diverging, diverging._state), copies(good, good._state), strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert_replicas_agree(diverging)


def test_good_steps_in_a_row_double_the_scale(mnist):
    trainer, losses = trained(mnist, "mixed_float16", steps=7, loss_scale_growth_steps=3, learning_rate=0.5)
    assert np.isfinite(losses).all()
    assert trainer.loss_scale_state() == {"loss_scale": INITIAL_LOSS_SCALE * 4, "skipped_steps": 0}


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_a_resumed_run_continues_bit_for_bit(mnist, tmp_path, precision):
    """The weights and (float16) the loss scale's state are checkpointed: 10 + 10 steps across a restore are the
    20 steps of one run, exactly."""
    settings = trainer_settings(batch_size=32, precision=precision, loss_scale_growth_steps=4)
    whole = Trainer(settings, make_strategy().strategy, mnist)
    run_steps(whole, 20)
    first = Trainer(settings, make_strategy().strategy, mnist)
    saver = Checkpointer(first, str(tmp_path), keep=1)
    run_steps(first, 10)
    saver.save(10, {"loss": [], "accuracy": []})
    saver.close()
    second = Trainer(settings, make_strategy().strategy, mnist)
    restorer = Checkpointer(second, str(tmp_path), keep=1)
    second.resume_at(restorer.restore_latest())
    run_steps(second, 10)
    restorer.close()
    for a, b in zip(whole.weights(), second.weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert whole.loss_scale_state() == second.loss_scale_state()


def test_a_resume_that_changes_the_precision_is_refused_in_one_line(tmp_path):
    flags = dict(vars(TrainConfig(logdir=str(tmp_path), run_name="r")))
    rundir.open_dir(str(tmp_path), "r", flags, rundir.plan(str(tmp_path), "r", flags))
    (tmp_path / "r" / "run.json").write_text("{}")  # a run, not a start that failed before its first checkpoint
    with pytest.raises(
        UserError,
        match="was started with --precision=float32, not mixed_bfloat16; rerun with --precision=float32 to resume it",
    ):
        rundir.plan(str(tmp_path), "r", {**flags, "precision": "mixed_bfloat16"})
    older = {name: value for name, value in flags.items() if name != "precision"}  # a run from before the flag
    (tmp_path / "r" / "run_config.json").write_text(__import__("json").dumps(older))
    assert rundir.plan(str(tmp_path), "r", flags) == "resume"


@pytest.mark.slow
def test_float16_on_the_cpu_without_xla_runs_its_matmuls_unfused(tmp_path):
    """TensorFlow 2.21's oneDNN runs a float16 matmul fused with its bias add hundreds of times slower than apart
    (docs/precision.md): the trainer turns Grappler's remapper off for float16 outside XLA on the CPU. The graphs
    TensorFlow runs (float32 and bfloat16 keep the fusion: the onednn test above)."""
    matmuls = matmuls_as_run(tmp_path, "mixed_float16", {"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert len(matmuls) == 8 and all(t == "float16" and not fused for _, t, fused in matmuls), matmuls


def test_only_float16_outside_xla_on_the_cpu_runs_unfused():
    from distmnist.training.trainer import unfused

    cpu, gpus = ["/job:localhost/replica:0/task:0/device:CPU:0"], ["/gpu:0", "/gpu:1"]
    assert unfused("mixed_float16", False, cpu)
    assert not unfused("mixed_float16", True, cpu)  # XLA's dots: no remapper
    assert not unfused("mixed_float16", False, gpus)
    assert not unfused("mixed_bfloat16", False, cpu) and not unfused("float32", False, cpu)
    assert not unfused("mixed_float16", False, ["/job:worker/replica:0/task:1/device:GPU:0"])


@pytest.mark.parametrize(
    "flags, capabilities, onednn_off, recommended, native",
    [
        ({"avx2", "fma"}, [], False, "float32", {"mixed_bfloat16": False, "mixed_float16": False}),
        (
            {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"},
            [],
            False,
            "mixed_bfloat16",
            {"mixed_bfloat16": True, "mixed_float16": False},
        ),
        (
            {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"},
            [],
            True,
            "float32",
            {"mixed_bfloat16": False, "mixed_float16": False},
        ),
        ({"avx2"}, [(8, 0), (9, 0)], False, "mixed_bfloat16", {"mixed_bfloat16": True, "mixed_float16": True}),
        ({"avx2"}, [(7, 5)], True, "mixed_float16", {"mixed_bfloat16": False, "mixed_float16": True}),
        ({"avx2"}, [(6, 1)], False, "float32", {"mixed_bfloat16": False, "mixed_float16": False}),
        ({"amx_bf16"}, [(8, 6), (7, 0)], False, "mixed_float16", {"mixed_bfloat16": False, "mixed_float16": True}),
        (  # Sapphire Rapids: float16 instructions, but TensorFlow's CPU kernels gain nothing from them
            {"avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"},
            [],
            False,
            "mixed_bfloat16",
            {"mixed_bfloat16": True, "mixed_float16": False},
        ),
        ({"avx512_fp16", "amx_fp16"}, [], False, "float32", {"mixed_bfloat16": False, "mixed_float16": False}),
    ],
)
def test_what_each_machine_runs_natively_and_what_it_recommends(flags, capabilities, onednn_off, recommended, native):
    support = devices.precision_support(flags, capabilities, onednn_off)
    assert support.recommended == recommended and support.native == native
    assert support.on_cpu == (not capabilities)


@pytest.mark.parametrize(
    "precision, jit_flag, flags, capabilities, onednn_off, xla",
    [
        ("mixed_bfloat16", None, {"amx_bf16"}, [], False, False),  # oneDNN's kernels take the matmuls
        ("mixed_bfloat16", True, {"amx_bf16"}, [], False, True),  # unless --jit_compile says otherwise
        ("mixed_bfloat16", None, {"amx_bf16"}, [], True, True),  # oneDNN switched off: nothing uses the tiles
        ("mixed_bfloat16", None, {"avx2"}, [], False, True),  # emulated: XLA as in float32
        ("mixed_bfloat16", None, {"amx_bf16"}, [(8, 0)], False, True),  # GPUs: the XLA call
        ("mixed_float16", None, {"amx_bf16"}, [], False, True),  # no float16 features
        ("mixed_float16", None, {"avx512_fp16", "amx_fp16"}, [], False, True),  # float16 gains nothing on CPUs
        ("float32", None, {"amx_bf16"}, [], False, True),
    ],
)
def test_xla_is_left_off_only_where_onednn_runs_the_precision_natively(
    precision, jit_flag, flags, capabilities, onednn_off, xla
):
    from distmnist.runs.runsetup import trainer_settings

    support = devices.precision_support(flags, capabilities, onednn_off)
    assert trainer_settings(TrainConfig(precision=precision, jit_compile=jit_flag), 100, support).jit_compile == xla


def test_a_cpu_with_bfloat16_features_and_onednn_switched_off_says_what_to_unset():
    """TensorFlow's oneDNN banner tells users to set TF_ENABLE_ONEDNN_OPTS=0 to silence it; on a CPU with AMX that
    would leave a mixed precision to kernels that do not use the tiles, so the run's warning says to unset it."""
    support = devices.precision_support({"avx512f", "avx512_bf16", "amx_bf16"}, [], onednn_off=True)
    assert support.switched_off == {"mixed_bfloat16": "amx_bf16, avx512_bf16"}
    assert "TF_ENABLE_ONEDNN_OPTS=0" in support.why
    assert devices.emulated("mixed_bfloat16", support) == (
        "--precision=mixed_bfloat16 cannot use this CPU's amx_bf16, avx512_bf16 with TF_ENABLE_ONEDNN_OPTS=0 "
        "(oneDNN's kernels off): no faster than float32; unset it to train faster"
    )
    assert devices.emulated("mixed_float16", support).startswith("--precision=mixed_float16 is emulated on CPUs")
    for value, off in [("0", True), ("false", True), (" False ", True), ("1", False), ("true", False), ("", False)]:
        assert devices.onednn_switched_off({"TF_ENABLE_ONEDNN_OPTS": value}) == off, value
    assert not devices.onednn_switched_off({})


# numpy's own CPUID reading (its dispatch) and the names Linux's /proc/cpuinfo gives the same features.
NUMPY_TO_LINUX = {
    "SSE": "sse",
    "SSE2": "sse2",
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "SSE41": "sse4_1",
    "SSE42": "sse4_2",
    "POPCNT": "popcnt",
    "AVX": "avx",
    "F16C": "f16c",
    "FMA3": "fma",
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX512CD": "avx512cd",
}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 flags: this is not x86")
def test_this_machines_cpu_flags_are_read():
    """The flags read from /proc/cpuinfo say what numpy finds the CPU does, feature by feature (SSE2 at least on
    every x86-64); a reading that found nothing, or another processor's line, would disagree."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1
        from numpy.core._multiarray_umath import __cpu_features__
    flags = devices.cpu_flags()
    found = {linux: bool(__cpu_features__.get(name)) for name, linux in NUMPY_TO_LINUX.items()}
    assert found["sse2"] and {linux: linux in flags for linux in found} == found


def test_cpu_flags_are_the_first_processors_and_none_without_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: A\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu sse2\n"
    )
    assert devices.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2"}
    assert devices.cpu_flags(str(tmp_path / "nonexistent")) == set()


@pytest.mark.slow
def test_the_default_run_in_bfloat16_reaches_98_percent_calibrated(tmp_path):
    """The default 10 epochs on real MNIST with --precision=mixed_bfloat16: >= 98% test accuracy and a calibrated
    SavedModel (ECE <= 0.02, served in float32 from the float32 weights); stderr holds the one emulation warning
    on a CPU without bfloat16 hardware, and nothing at all on one with it."""
    result = run_module(
        "distmnist.train", "--precision=mixed_bfloat16", f"--logdir={tmp_path}", "--run_name=bf16", timeout_s=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert summary["final_test_accuracy"] >= 0.98 and summary["calibration"]["test"]["ece_after"] <= 0.02
    assert summary["precision"] == {"policy": "mixed_bfloat16"} and summary["flags"]["precision"] == "mixed_bfloat16"
    support = devices.support_of([])  # as the run decides, TF_ENABLE_ONEDNN_OPTS included
    expected = (
        []
        if support.native["mixed_bfloat16"]
        else [f"warning: {devices.emulated('mixed_bfloat16', support)}; training anyway"]
    )
    assert [line for line in result.stderr.splitlines() if "dataset.py" not in line] == expected
    assert "precision:            mixed_bfloat16" in result.stdout


@pytest.mark.gpu
def test_the_default_run_in_float16_on_a_gpu_reaches_98_percent(tmp_path):
    result = run_module(
        "distmnist.train",
        "--precision=mixed_float16",
        f"--logdir={tmp_path}",
        "--run_name=fp16",
        timeout_s=600,
        gpu=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "fp16" / "run.json").read_text())
    assert summary["final_test_accuracy"] >= 0.98 and summary["calibration"]["test"]["ece_after"] <= 0.02
    assert summary["precision"]["policy"] == "mixed_float16"
    assert_reachable_loss_scale(summary["precision"], summary["global_step"])


def assert_reachable_loss_scale(state: dict, steps: int, growth_steps: int = 2000) -> None:
    """The loss scale a run reports is one dynamic loss scaling reaches from 2^15 in `steps` steps of which
    state["skipped_steps"] were skipped: a power of two, halved at most once a skipped step and never below 1,
    doubled at most once every growth_steps good steps."""
    scale, skipped = state["loss_scale"], state["skipped_steps"]
    exponent = math.log2(scale)
    assert exponent == int(exponent) and 0 <= skipped <= steps, state
    assert max(0, 15 - skipped) <= exponent <= 15 + (steps - skipped) // growth_steps, state


@pytest.mark.parametrize(
    "state, steps, reachable",
    [
        ({"loss_scale": 2.0**15, "skipped_steps": 0}, 10, True),
        ({"loss_scale": 2.0**12, "skipped_steps": 3}, 10, True),
        ({"loss_scale": 2.0**16, "skipped_steps": 0}, 2000, True),
        ({"loss_scale": 1.0, "skipped_steps": 15}, 20, True),
        ({"loss_scale": 2.0**16, "skipped_steps": 0}, 1999, False),  # doubled before 2000 good steps
        ({"loss_scale": 2.0**12, "skipped_steps": 2}, 10, False),  # halved without a skipped step
        ({"loss_scale": 0.5, "skipped_steps": 16}, 20, False),  # below 1
        ({"loss_scale": 3000.0, "skipped_steps": 4}, 10, False),  # not a power of two
    ],
)
def test_what_dynamic_loss_scaling_can_reach(state, steps, reachable):
    if reachable:
        assert_reachable_loss_scale(state, steps)
    else:
        with pytest.raises(AssertionError):
            assert_reachable_loss_scale(state, steps)


@pytest.mark.slow  # a run with its export
def test_a_float16_run_reports_a_loss_scale_it_can_reach_and_its_steps_skipped(tmp_path, mnist):
    """run.json's precision entry on the CPU (float16 emulated) after skipped steps and growths: the scale and the
    steps skipped are those the trainer reached, and a scale that dynamic loss scaling can reach from them."""
    from distmnist.runs.artifacts import write_artifacts
    from distmnist.runs.painter import Painter
    from distmnist.runs.run import train
    from distmnist.runs.runsetup import set_up

    config = TrainConfig(
        logdir=str(tmp_path),
        run_name="r",
        precision="mixed_float16",
        max_steps=40,
        batch_size=16,
        steps_per_loop=10,
        eval_every=40,
        log_every=10,
        jit_compile=False,
        learning_rate=1e-3,
    )  # huge's gradients, a thousand times the loss's
    run = set_up(config, make_strategy(), mnist)
    run.trainer = Trainer(
        dataclasses.replace(run.trainer.settings, loss_scale_growth_steps=8), run.choice.strategy, mnist, loss_fn=huge
    )  # skips first, then grows: both kinds of change
    run.checkpointer = Checkpointer(run.trainer, run.run_dir, config.keep_checkpoints)
    run.timings["imports_s"] = None  # as train_and_evaluate leaves it for a caller that is not an entry point
    timing, history = train(run)
    summary = write_artifacts(run, timing, history, Painter(inline=True))
    state = run.trainer.loss_scale_state()
    assert summary["precision"] == {"policy": "mixed_float16", **state}
    assert state["skipped_steps"] > 0 and state["loss_scale"] > INITIAL_LOSS_SCALE / 2 ** state["skipped_steps"]
    assert_reachable_loss_scale(summary["precision"], summary["global_step"], growth_steps=8)


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("replicas, jit", [(1, False), (2, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_the_low_precision_graphs_have_gpu_kernels_in_their_types(mnist, precision, replicas, jit):
    """Every op TensorFlow's executor would place on a GPU (outside XLA) has a GPU kernel for the types it runs in,
    and the matmuls are in the low type, as on a GPU (traced here on the CPU; one replica with XLA compiles the
    whole call, which test_gpu_ready.py's XLA tests check)."""
    from kernel_registry import ops_without_gpu_kernel

    trainer = Trainer(
        trainer_settings(batch_size=16, precision=precision, jit_compile=jit),
        make_strategy(cpu_replicas=replicas).strategy,
        mnist,
    )
    graphs = helpers.graphs(trainer, mnist)
    for name, graph in graphs.items():
        assert ops_without_gpu_kernel(graph) == [], name
    low = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}[precision].as_datatype_enum
    matmul_types = {
        node.attr["T"].type
        for function in graphs["train"].library.function
        for node in function.node_def
        if node.op == "MatMul"
    }
    matmul_types |= {node.attr["T"].type for node in graphs["train"].node if node.op == "MatMul"}
    assert matmul_types == {low}  # under per-replica XLA, inside the functions it compiles
    run_steps(trainer, 3)  # and the traced code runs

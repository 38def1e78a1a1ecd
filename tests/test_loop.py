"""The training loop: replica-count invariance, input-path agreement, logging independent of steps_per_loop,
exact evaluation, no retracing, divergence detection, and accuracy on the real MNIST."""

import numpy as np
import pytest
import tensorflow as tf

from distmnist.common.errors import TrainingDiverged
from distmnist.data import dataset
from distmnist.training.controller import Reporter
from distmnist.training.evaluator import Evaluator
from distmnist.training.model import images_to_features
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer, run_steps

from helpers import evaluator, graphs, make_tiny_mnist, run_schedule, trainer_settings


class Recorder(Reporter):
    def __init__(self):
        self.loss, self.acc = {}, {}

    def losses(self, logged, end_step, examples_per_sec):
        assert examples_per_sec > 0
        self.loss.update(dict(logged))

    def accuracy(self, step, value):
        self.acc[step] = value


@pytest.fixture(scope="module")
def mnist():
    return make_tiny_mnist(num_train=2048, num_test=203)


def train(mnist, replicas, steps=20, loss_fn=None, eval_every=500, **overrides):
    """steps=None: one epoch."""
    extra = {"loss_fn": loss_fn} if loss_fn else {}
    trainer = Trainer(trainer_settings(**overrides), make_strategy(cpu_replicas=replicas).strategy, mnist, **extra)
    recorder = Recorder()
    run_schedule(trainer, mnist, steps or trainer.steps_per_epoch, recorder, eval_every=eval_every)
    return trainer, recorder


def max_weight_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.weights(), b.weights(), strict=True))


@pytest.mark.parametrize("input_path", ["device", pytest.param("tfdata", marks=pytest.mark.slow)])
def test_replica_count_does_not_change_the_model(mnist, input_path):
    """N replicas x batch b train the same model as 1 replica x batch N*b (same examples in each step)."""
    one, _ = train(mnist, 1, batch_size=64, input=input_path, jit_compile=False)
    for replicas in (2, 4):
        many, _ = train(mnist, replicas, batch_size=64 // replicas, input=input_path, jit_compile=False)
        assert many.num_replicas == replicas and many.global_batch_size == 64
        assert max_weight_difference(one, many) < 1e-5


def test_xla_trains_the_same_model_up_to_rounding(mnist):
    """XLA's kernels round differently; at lr 1.5 the first steps amplify any rounding difference (to about
    1e-3 by step 20, on real MNIST too), so compare before that: 1e-8 after 5 steps."""
    plain, _ = train(mnist, 1, steps=5, batch_size=64, jit_compile=False)
    for replicas in (1, 2):  # one replica compiles the whole loop, several compile each replica's step
        xla, _ = train(mnist, replicas, steps=5, batch_size=64 // replicas, jit_compile=True)
        assert max_weight_difference(plain, xla) < 1e-6


def test_per_replica_mean_under_a_sum_all_reduce_fails_the_invariance_check(mnist):
    def per_replica_mean(targets, logits, global_batch_size):
        return tf.reduce_mean(tf.square(targets - logits))  # wrong: ignores the other replicas

    # At the default rate the doubled gradient diverges outright; a lower rate shows the plain difference.
    one, _ = train(mnist, 1, batch_size=64, loss_fn=per_replica_mean, learning_rate=0.5)
    two, _ = train(mnist, 2, batch_size=32, loss_fn=per_replica_mean, learning_rate=0.5)
    assert max_weight_difference(one, two) > 1e-2


@pytest.mark.parametrize("replicas", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_device_and_tfdata_inputs_train_the_same_model(mnist, replicas):
    device, device_log = train(mnist, replicas, batch_size=32, input="device", jit_compile=False)
    tfdata, tfdata_log = train(mnist, replicas, batch_size=32, input="tfdata", jit_compile=False)
    assert max_weight_difference(device, tfdata) < 1e-5
    assert device_log.loss[0] == pytest.approx(tfdata_log.loss[0], abs=1e-7)  # the same first batch


@pytest.mark.parametrize(
    "precision,replicas,streams",
    [
        ("float32", 1, 1),
        ("mixed_bfloat16", 1, 1),
        pytest.param("mixed_bfloat16", 1, 2, marks=pytest.mark.slow),
        pytest.param("mixed_bfloat16", 2, 1, marks=pytest.mark.slow),
    ],
)
def test_without_xla_the_lean_call_trains_as_the_checked_one_bit_for_bit(mnist, precision, replicas, streams):
    """Without XLA the unchecked call is the lean one: num_steps iterations, no branch around the step, no select
    around the update (one ResourceApplyGradientDescent a weight). It trains the same model, bit for bit, as the
    checked call, which masks and selects, over calls of every length (16, 16 and 5 steps); with the batch in
    streams (hostthreads.py), each stream has its own matmuls."""
    made = []
    for checked in (False, True):
        trainer = Trainer(
            trainer_settings(
                batch_size=32 // replicas, steps_per_loop=16, precision=precision, jit_compile=False, streams=streams
            ),
            make_strategy(cpu_replicas=replicas).strategy,
            mnist,
        )
        trainer.checks_each_step = checked  # every call the checked one, as over tf.data
        made.append((trainer, run_steps(trainer, 37)))
    (lean, lean_losses), (checked, checked_losses) = made
    assert lean.lean_call and len(lean_losses) == 37
    np.testing.assert_array_equal(lean_losses, checked_losses)
    assert max_weight_difference(lean, checked) == 0.0
    ops = [node.op for function in graphs(lean)["train"].library.function for node in function.node_def]
    assert ops.count("ResourceApplyGradientDescent") == 6 * replicas
    assert not {"If", "StatelessIf", "SelectV2"} & set(ops)
    # forward 3 and backward 5 (the first layer's input needs no gradient) a stream, each replica
    assert ops.count("MatMul") == 8 * streams * replicas


def test_the_batch_in_streams_trains_the_model_the_whole_batch_trains(mnist):
    """bfloat16's batch in two streams (hostthreads.py) is the same step, its gradients rounded to bfloat16 per
    part and summed in float32: the first steps' losses within bfloat16's rounding of the whole batch's (later,
    at this rate, rounding differences grow, as between any two orders of a sum), and the loss falls as far; the
    evaluator, its test rows in two parts, answers every image as the whole does."""
    runs = []
    for streams in (1, 2):
        trainer = Trainer(
            trainer_settings(
                batch_size=64, steps_per_loop=20, precision="mixed_bfloat16", jit_compile=False, streams=streams
            ),
            make_strategy().strategy,
            mnist,
        )
        runs.append((trainer, run_steps(trainer, 60)))
    (whole, whole_losses), (split, split_losses) = runs
    np.testing.assert_allclose(split_losses[:5], whole_losses[:5], rtol=1e-2)
    assert not np.array_equal(split_losses, whole_losses)  # two streams ran: the sums differ
    assert np.mean(split_losses[-20:]) == pytest.approx(np.mean(whole_losses[-20:]), rel=0.25)
    assert np.mean(split_losses[-20:]) < 0.5 * split_losses[0]
    accuracy, answers = Evaluator(whole.strategy, whole.model, mnist).evaluate()
    assert Evaluator(whole.strategy, whole.model, mnist, streams=2).evaluate()[0] == accuracy
    np.testing.assert_array_equal(Evaluator(whole.strategy, whole.model, mnist, streams=2).evaluate()[1], answers)


def test_only_a_low_precision_splits_its_batch(mnist):
    with pytest.raises(ValueError, match="only a low precision splits its batch"):
        Trainer(trainer_settings(batch_size=32, precision="float32", streams=2), make_strategy().strategy, mnist)


def test_logged_values_do_not_depend_on_steps_per_loop(mnist):
    runs = [train(mnist, 1, steps=70, batch_size=32, steps_per_loop=k, eval_every=25)[1] for k in (1, 7, 50)]
    for other in runs[1:]:
        assert sorted(other.loss) == list(range(70))
        assert sorted(other.acc) == [0, 25, 50, 70]
        np.testing.assert_allclose(
            [other.loss[s] for s in range(70)], [runs[0].loss[s] for s in range(70)], rtol=0, atol=1e-6
        )
        np.testing.assert_allclose(list(other.acc.values()), list(runs[0].acc.values()), atol=1e-9)


def test_loss_falls_and_the_function_is_traced_once_across_epochs(mnist):
    trainer, log = train(mnist, 2, steps=150, batch_size=32, steps_per_loop=13, learning_rate=0.5)
    assert trainer.steps_per_epoch == 32 and trainer.step == 150  # crosses four epoch boundaries
    assert trainer.trace_count == 1
    first, last = np.mean([log.loss[s] for s in range(10)]), np.mean([log.loss[s] for s in range(140, 150)])
    assert last < 0.5 * first
    assert log.acc[150] > 0.9


@pytest.mark.parametrize("replicas", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_evaluation_counts_every_test_image_once(mnist, replicas):
    """203 test images split over 1, 2 or 4 replicas: the accuracy equals a plain numpy count."""
    trainer, _ = train(mnist, replicas, steps=5, batch_size=16, jit_compile=False)
    features = images_to_features(mnist.x_test).numpy()
    w = trainer.weights()
    h = np.maximum(features @ w[0] + w[1], 0)
    h = np.maximum(h @ w[2] + w[3], 0)
    expected = np.mean(np.argmax(h @ w[4] + w[5], axis=1) == mnist.y_test)
    assert evaluator(trainer, mnist).evaluate()[0] == pytest.approx(expected, abs=1e-12)
    assert 0 < evaluator(trainer, mnist).evaluate()[0] < 1  # a real mix of right and wrong, so a miscount would show


@pytest.mark.parametrize("replicas", [1, 2])
def test_non_finite_loss_stops_on_the_device_and_names_the_step_and_replica(mnist, replicas):
    recorder = Recorder()
    trainer = Trainer(
        trainer_settings(learning_rate=50.0, batch_size=32, steps_per_loop=50),
        make_strategy(cpu_replicas=replicas).strategy,
        mnist,
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"non-finite at step (\d+) on replica 0 \(loss (nan|inf)\); "
        r"lower --learning_rate",
    ) as caught:
        run_schedule(trainer, mnist, 60, recorder)
    # Nothing was reported, and on the device the bad step and every later one in the call were masked, not
    # branched on: the weights are those after the last good step, as a run of exactly that many steps leaves them.
    assert 0 < caught.value.step < 10 and trainer.step == 0 and recorder.loss == {}
    assert not np.isfinite(caught.value.loss)
    good, _ = train(mnist, replicas, steps=caught.value.step, learning_rate=50.0, batch_size=32, steps_per_loop=50)
    assert all(np.isfinite(w).all() for w in trainer.weights())
    assert max_weight_difference(good, trainer) == 0.0


@pytest.mark.slow
def test_one_epoch_of_real_mnist_reaches_94_percent():
    mnist = dataset.load()
    trainer, log = train(mnist, 1, steps=None)
    assert trainer.step == 468
    assert log.acc[468] >= 0.94


def test_epoch_orders_past_the_runs_epochs_go_on_as_one_unbounded_draw():
    """The orders are drawn ahead only up to the run's epochs; asked for more (a caller that trains past its total),
    the sequence goes on with exactly the orders an unbounded draw gives, each epoch shuffled afresh."""
    from distmnist.training.inputs import EpochOrder

    unbounded = EpochOrder(50, 20, seed=3)
    bounded = EpochOrder(50, 20, seed=3, epochs=2)
    orders = [bounded.next_epoch() for _ in range(5)]
    for order in orders:
        np.testing.assert_array_equal(order, unbounded.next_epoch())
        assert sorted(order) == list(range(50))
    assert len({tuple(order) for order in orders}) == 5


def test_epoch_orders_are_drawn_without_autotuning():
    """Nothing in the orders' pipeline is tuned; with tf.data's autotuning on, its model thread ran beside the
    training and a deleted iterator waited for it. The orders themselves are the
    tutorial pipeline's, autotuned there (test_device_and_tfdata_inputs_train_the_same_model)."""
    from distmnist.training.inputs import EpochOrder

    assert EpochOrder(50, 20, seed=3)._sequence().options().autotune.enabled is False

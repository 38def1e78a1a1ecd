"""Mixed precision (--precision): bfloat16 and float16 matmuls and activations around float32 weights, loss and
update; float16 with dynamic loss scaling. What each precision must keep of float32's guarantees, with tolerances
derived from the types' unit roundoff (docs/precision.md)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError
from distmnist.runs import rundir
from distmnist.runs.checkpoints import Checkpointer
from distmnist.training import devices, inputs
from distmnist.training.controller import run_steps
from distmnist.training.model import forward, images_to_features
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import INITIAL_LOSS_SCALE, Trainer, TrainerSettings

from helpers import make_tiny_mnist, run_module, run_python

MIXED = ("mixed_bfloat16", "mixed_float16")
ROUNDINGS = 12  # the most roundings to the low type between the pixels and a weight's gradient: 4 per layer
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "mixed_bfloat16": 2.0 ** -8, "mixed_float16": 2.0 ** -11}


@pytest.fixture(scope="module")
def mnist():
    return make_tiny_mnist(num_train=2048, num_test=203)


def trained(mnist, precision, replicas=1, steps=20, **settings):
    trainer = Trainer(TrainerSettings(precision=precision, **{"batch_size": 64 // replicas, **settings}),
                      make_strategy(cpu_replicas=replicas).strategy, mnist)
    losses = run_steps(trainer, steps)
    return trainer, losses


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.weights(), b.weights()))


@pytest.mark.parametrize("precision", MIXED)
def test_the_forward_pass_runs_in_the_low_precision_and_answers_in_float32(precision):
    """Every matmul of the traced forward pass is in the low type, the outputs float32, within the type's rounding
    of float32's: each output sums 784, 512 and 256 products, each rounded once to the type (Higham: n*u)."""
    rng = np.random.default_rng(0)
    weights = [tf.constant(rng.uniform(-0.05, 0.05, s).astype(np.float32)) for s in
               ((784, 512), (512,), (512, 256), (256,), (256, 10), (10,))]
    features = tf.constant(rng.uniform(0, 1, (32, 784)).astype(np.float32))
    low = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}[precision]
    graph = tf.function(lambda x: forward(weights, x, low)).get_concrete_function(
        tf.TensorSpec([None, 784], tf.float32)).graph
    assert {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"} == {low}
    exact = forward(weights, features).numpy()
    mixed = forward(weights, features, low)
    assert mixed.dtype == tf.float32
    bound = 784 * UNIT_ROUNDOFF[precision] * float(np.abs(exact).max() + 1)
    assert 0 < np.abs(mixed.numpy() - exact).max() < bound


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("jit", [False, True])
def test_the_training_images_are_resident_in_the_low_type_and_change_no_number(mnist, precision, jit):
    """The forward pass's first op casts the pixels to the low type, so they are kept in it on the device: half the
    bytes, one op a step fewer. The steps' losses and weights are bit for bit those of float32-resident images."""
    low = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}[precision]
    settings = TrainerSettings(batch_size=32, precision=precision, jit_compile=jit)
    resident, as_float32 = (Trainer(settings, make_strategy().strategy, mnist) for _ in range(2))
    assert resident.strategy.experimental_local_results(resident.input.features)[0].dtype == low
    as_float32.input.features = inputs.on_each_replica(as_float32.strategy,
                                                       lambda r, n: images_to_features(mnist.x_train))
    np.testing.assert_array_equal(run_steps(resident, 12), run_steps(as_float32, 12))
    for a, b in zip(resident.model.get_numpy(), as_float32.model.get_numpy()):
        np.testing.assert_array_equal(a, b)


# Trains two steps outside XLA; TF_DUMP_GRAPH_PREFIX has TensorFlow write each function's graph as it runs it.
TRAIN_TWO_STEPS = """
import numpy as np
from distmnist.data.dataset import Mnist
from distmnist.training.strategy import make_strategy
from distmnist.training.trainer import Trainer, TrainerSettings
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (256, 28, 28), np.uint8), rng.integers(0, 10, 256).astype(np.uint8)
settings = TrainerSettings(batch_size=32, precision={precision!r}, jit_compile=False, steps_per_loop=2)
Trainer(settings, make_strategy().strategy, Mnist(x, y, x[:32], y[:32], "random")).train(2)
"""


def matmuls_as_run(tmp_path, precision: str, env: dict, unset=()) -> list:
    """The matmuls of the training call as TensorFlow runs it outside XLA, after its graph rewrites (grappler's
    fusions, oneDNN's kernels): (op, type, fused ops) for each, from the graphs TensorFlow dumps."""
    from google.protobuf import text_format

    result = run_python(TRAIN_TWO_STEPS.format(precision=precision), env={
        **env, "TF_DUMP_GRAPH_PREFIX": str(tmp_path), "TF_DUMP_GRAPH_NAME_FILTER": "*"}, unset=unset)
    assert result.returncode == 0, result.stderr[-3000:]
    found = []
    for path in tmp_path.glob("*_partition_*after_partition_passes.pbtxt"):  # as the executor gets it
        graph = text_format.Parse(path.read_text(), tf.compat.v1.GraphDef())
        found += [(node.op, tf.as_dtype(node.attr["T"].type).name,
                   tuple(op.decode() for op in node.attr["fused_ops"].list.s))
                  for node in graph.node if "MatMul" in node.op]
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
    assert sorted(fused for _, _, fused in matmuls if fused) == [("BiasAdd",), ("BiasAdd", "Relu"),
                                                                  ("BiasAdd", "Relu")], matmuls


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_a_short_run_learns_as_float32_does(mnist, precision):
    """150 steps on tiny data: the loss falls as float32's does, within the type's rounding of it (each step's loss
    is an average whose terms carry the forward pass's n*u error), and the test accuracy lands within 3 images of
    203 of float32's."""
    reference, ref_losses = trained(mnist, "float32", steps=150, learning_rate=0.5)
    low, losses = trained(mnist, precision, steps=150, learning_rate=0.5)
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    assert abs(losses[0] - ref_losses[0]) < 784 * UNIT_ROUNDOFF[precision] * ref_losses[0]
    assert abs(low.evaluate()[0] - reference.evaluate()[0]) <= 3 / 203


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
    from distmnist.training import step

    one, _ = trained(mnist, precision, replicas=1, steps=5, jit_compile=False)
    two, _ = trained(mnist, precision, replicas=2, steps=5, jit_compile=False)
    features = tf.cast(tf.reshape(mnist.x_train[:2048], [2048, 784]), tf.float32) / 255.0
    targets = tf.one_hot(mnist.y_train[:2048].astype(np.int32), 10)
    fresh = Trainer(TrainerSettings(batch_size=64), make_strategy().strategy, mnist)
    largest = 0.0
    for weights in (fresh.weights(), one.weights()):
        for start in range(0, 2048, 64):
            grads, _ = step.gradients([tf.constant(w) for w in weights], features[start:start + 64],
                                      targets[start:start + 64], 64)
            largest = max(largest, max(float(np.abs(g).max()) for g in grads))
    bound = 2 * 5 * 1.5 * ROUNDINGS * UNIT_ROUNDOFF[precision] * largest
    assert max_difference(one, two) < bound

    def per_replica_mean(targets, outputs, global_batch_size):
        return tf.reduce_mean(tf.square(targets - outputs))  # wrong: ignores the other replicas

    wrong_one = Trainer(TrainerSettings(batch_size=64, precision=precision, jit_compile=False),
                        make_strategy().strategy, mnist, loss_fn=per_replica_mean)
    wrong_two = Trainer(TrainerSettings(batch_size=32, precision=precision, jit_compile=False),
                        make_strategy(cpu_replicas=2).strategy, mnist, loss_fn=per_replica_mean)
    run_steps(wrong_one, 5)
    run_steps(wrong_two, 5)
    assert max_difference(wrong_one, wrong_two) > bound


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_the_losses_do_not_depend_on_steps_per_loop(mnist, precision):
    """Without XLA every step runs the same kernels whatever the call's length, so 1, 7 and 50 steps per call give
    the same 70 losses and weights, bit for bit, in each precision (the float16 loss scale's state included)."""
    runs = [trained(mnist, precision, steps=70, batch_size=32, steps_per_loop=k, jit_compile=False,
                    loss_scale_growth_steps=20) for k in (1, 7, 50)]
    for trainer, losses in runs[1:]:
        np.testing.assert_array_equal(losses, runs[0][1])
        assert max_difference(trainer, runs[0][0]) == 0.0
        assert trainer.loss_scale_state() == runs[0][0].loss_scale_state()


def test_a_planted_overflow_skips_the_step_and_halves_the_scale_on_every_replica(mnist):
    """A loss 1000 times too large overflows float16's gradients at the initial scale: the step changes no weight
    and halves the scale, on both replicas, and the run goes on; once the scale is small enough, it trains."""
    def huge(targets, outputs, global_batch_size):
        return 1e3 * tf.reduce_sum(tf.square(targets - outputs)) / global_batch_size

    trainer = Trainer(TrainerSettings(batch_size=32, precision="mixed_float16", learning_rate=1e-12),
                      make_strategy(cpu_replicas=2).strategy, mnist, loss_fn=huge)
    before = trainer.weights()
    run_steps(trainer, 1)
    assert trainer.loss_scale_state() == {"loss_scale": INITIAL_LOSS_SCALE / 2, "skipped_steps": 1}
    for a, b in zip(before, trainer.weights()):
        np.testing.assert_array_equal(a, b)
    copies = [v.numpy() for v in trainer.strategy.experimental_local_results(trainer.loss_scale.scale)]
    assert copies == [INITIAL_LOSS_SCALE / 2] * 2
    run_steps(trainer, 30)  # halves until the scaled gradients fit, then trains
    state = trainer.loss_scale_state()
    assert 1 < state["skipped_steps"] < 31 and state["loss_scale"] == INITIAL_LOSS_SCALE / 2 ** state["skipped_steps"]
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, trainer.weights())) > 0


def test_good_steps_in_a_row_double_the_scale(mnist):
    trainer, losses = trained(mnist, "mixed_float16", steps=7, loss_scale_growth_steps=3, learning_rate=0.5)
    assert np.isfinite(losses).all()
    assert trainer.loss_scale_state() == {"loss_scale": INITIAL_LOSS_SCALE * 4, "skipped_steps": 0}


@pytest.mark.slow
@pytest.mark.parametrize("precision", MIXED)
def test_a_resumed_run_continues_bit_for_bit(mnist, tmp_path, precision):
    """The weights and (float16) the loss scale's state are checkpointed: 10 + 10 steps across a restore are the
    20 steps of one run, exactly."""
    settings = TrainerSettings(batch_size=32, precision=precision, loss_scale_growth_steps=4)
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
    for a, b in zip(whole.weights(), second.weights()):
        np.testing.assert_array_equal(a, b)
    assert whole.loss_scale_state() == second.loss_scale_state()


def test_a_resume_that_changes_the_precision_is_refused_in_one_line(tmp_path):
    flags = dict(vars(TrainConfig(logdir=str(tmp_path), run_name="r")))
    rundir.open_dir(str(tmp_path), "r", flags, rundir.plan(str(tmp_path), "r", flags))
    (tmp_path / "r" / "run.json").write_text("{}")  # a run, not a start that failed before its first checkpoint
    with pytest.raises(UserError, match="was started with --precision=float32, not mixed_bfloat16; rerun with "
                                        "--precision=float32 to resume it"):
        rundir.plan(str(tmp_path), "r", {**flags, "precision": "mixed_bfloat16"})
    older = {name: value for name, value in flags.items() if name != "precision"}  # a run from before the flag
    (tmp_path / "r" / "run_config.json").write_text(__import__("json").dumps(older))
    assert rundir.plan(str(tmp_path), "r", flags) == "resume"


@pytest.mark.parametrize("flags, capabilities, onednn_off, recommended, native", [
    ({"avx2", "fma"}, [], False, "float32", {"mixed_bfloat16": False, "mixed_float16": False}),
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, [], False, "mixed_bfloat16",
     {"mixed_bfloat16": True, "mixed_float16": False}),
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, [], True, "float32",
     {"mixed_bfloat16": False, "mixed_float16": False}),
    ({"avx2"}, [(8, 0), (9, 0)], False, "mixed_bfloat16", {"mixed_bfloat16": True, "mixed_float16": True}),
    ({"avx2"}, [(7, 5)], True, "mixed_float16", {"mixed_bfloat16": False, "mixed_float16": True}),
    ({"avx2"}, [(6, 1)], False, "float32", {"mixed_bfloat16": False, "mixed_float16": False}),
    ({"amx_bf16"}, [(8, 6), (7, 0)], False, "mixed_float16", {"mixed_bfloat16": False, "mixed_float16": True}),
])
def test_what_each_machine_runs_natively_and_what_it_recommends(flags, capabilities, onednn_off, recommended,
                                                                native):
    support = devices.precision_support(flags, capabilities, onednn_off)
    assert support.recommended == recommended and support.native == native
    assert support.on_cpu == (not capabilities)


@pytest.mark.parametrize("precision, jit_flag, flags, capabilities, onednn_off, xla", [
    ("mixed_bfloat16", None, {"amx_bf16"}, [], False, False),  # oneDNN's kernels take the matmuls
    ("mixed_bfloat16", True, {"amx_bf16"}, [], False, True),  # unless --jit_compile says otherwise
    ("mixed_bfloat16", None, {"amx_bf16"}, [], True, True),  # oneDNN switched off: nothing uses the tiles
    ("mixed_bfloat16", None, {"avx2"}, [], False, True),  # emulated: XLA as in float32
    ("mixed_bfloat16", None, {"amx_bf16"}, [(8, 0)], False, True),  # GPUs: the XLA call
    ("mixed_float16", None, {"amx_bf16"}, [], False, True),  # no float16 features
    ("float32", None, {"amx_bf16"}, [], False, True),
])
def test_xla_is_left_off_only_where_onednn_runs_the_precision_natively(precision, jit_flag, flags, capabilities,
                                                                        onednn_off, xla):
    from distmnist.runs.run import trainer_settings

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
        "(oneDNN's kernels off): no faster than float32; unset it to train faster")
    assert devices.emulated("mixed_float16", support).startswith("--precision=mixed_float16 is emulated on this CPU")
    for value, off in [("0", True), ("false", True), (" False ", True), ("1", False), ("true", False), ("", False)]:
        assert devices.onednn_switched_off({"TF_ENABLE_ONEDNN_OPTS": value}) == off, value
    assert not devices.onednn_switched_off({})


def test_this_machines_cpu_flags_are_read():
    flags = devices.cpu_flags()
    assert "sse2" in flags or not flags  # x86 machines list it; elsewhere /proc/cpuinfo may say nothing
    assert devices.cpu_flags("/nonexistent") == set()


@pytest.mark.slow
def test_the_default_run_in_bfloat16_reaches_98_percent_calibrated(tmp_path):
    """The default 10 epochs on real MNIST with --precision=mixed_bfloat16: >= 98% test accuracy and a calibrated
    SavedModel (ECE <= 0.02, served in float32 from the float32 weights); stderr holds the one emulation warning
    on a CPU without bfloat16 hardware, and nothing at all on one with it."""
    result = run_module("distmnist.train", "--precision=mixed_bfloat16", f"--logdir={tmp_path}", "--run_name=bf16",
                        timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert summary["final_test_accuracy"] >= 0.98 and summary["calibration"]["test"]["ece_after"] <= 0.02
    assert summary["precision"] == {"policy": "mixed_bfloat16"} and summary["flags"]["precision"] == "mixed_bfloat16"
    support = devices.support_of([])  # as the run decides, TF_ENABLE_ONEDNN_OPTS included
    expected = [] if support.native["mixed_bfloat16"] else [
        f"warning: {devices.emulated('mixed_bfloat16', support)}; training anyway"]
    assert [line for line in result.stderr.splitlines() if "dataset.py" not in line] == expected
    assert "precision:            mixed_bfloat16" in result.stdout


@pytest.mark.gpu
def test_the_default_run_in_float16_on_a_gpu_reaches_98_percent(tmp_path):
    result = run_module("distmnist.train", "--precision=mixed_float16", f"--logdir={tmp_path}", "--run_name=fp16",
                        timeout_s=600, gpu=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "fp16" / "run.json").read_text())
    assert summary["final_test_accuracy"] >= 0.98 and summary["calibration"]["test"]["ece_after"] <= 0.02
    assert summary["precision"]["policy"] == "mixed_float16" and summary["precision"]["loss_scale"] >= 1


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("replicas, jit", [(1, False), (2, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_the_low_precision_graphs_have_gpu_kernels_in_their_types(mnist, precision, replicas, jit):
    """Every op TensorFlow's executor would place on a GPU (outside XLA) has a GPU kernel for the types it runs in,
    and the matmuls are in the low type, as on a GPU (traced here on the CPU; one replica with XLA compiles the
    whole call, which test_gpu_ready.py's XLA tests check)."""
    from kernel_registry import ops_without_gpu_kernel

    trainer = Trainer(TrainerSettings(batch_size=16, precision=precision, jit_compile=jit),
                      make_strategy(cpu_replicas=replicas).strategy, mnist)
    graphs = trainer.graphs()
    for name, graph in graphs.items():
        assert ops_without_gpu_kernel(graph) == [], name
    low = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}[precision].as_datatype_enum
    matmul_types = {node.attr["T"].type for function in graphs["train"].library.function
                    for node in function.node_def if node.op == "MatMul"}
    matmul_types |= {node.attr["T"].type for node in graphs["train"].node if node.op == "MatMul"}
    assert matmul_types == {low}  # under per-replica XLA, inside the functions it compiles
    run_steps(trainer, 3)  # and the traced code runs

"""GPU readiness, established on the CPU from what TensorFlow itself reports: every op TensorFlow runs outside XLA
has a GPU kernel for its dtypes, no collective reduces int32 (GPUs refuse it), each replica's data lives on
its own device, and multi-worker picks NCCL on GPUs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from distmnist.runs.export import Classifier
from distmnist.training.strategy import communication, make_strategy
from distmnist.training.trainer import Trainer

import helpers
from helpers import REPO, free_ports, run_schedule, trainer_settings
from kernel_registry import (
    collective_dtypes,
    compiled_by_xla,
    loop_body_ops,
    memory_types,
    nodes_outside_xla,
    ops_without_gpu_kernel,
    step_crossings,
)

INT32 = tf.int32.as_datatype_enum


def test_the_registry_check_finds_an_op_without_a_gpu_kernel():
    """The check can fail: TensorFlow 2.21 has no GPU GatherV2 for uint8, and has one for float32."""
    images = tf.zeros([8, 28, 28], tf.uint8)
    graph = tf.function(lambda x, i: tf.gather(x, i)).get_concrete_function(images, tf.constant([1, 2]))
    assert [op for op, _ in ops_without_gpu_kernel(graph.graph.as_graph_def())] == ["GatherV2"]
    as_float = tf.function(lambda x, i: tf.gather(tf.cast(x, tf.float32), i)).get_concrete_function(
        images, tf.constant([1, 2])
    )
    assert ops_without_gpu_kernel(as_float.graph.as_graph_def()) == []


@pytest.mark.parametrize(
    "replicas,input_path,jit",
    [
        (1, "device", False),  # one GPU with --nojit_compile: nothing hides in XLA
        pytest.param(1, "tfdata", False, marks=pytest.mark.slow),
        (2, "device", None),  # the default on 2 replicas: XLA per replica, the loop and collectives outside
        pytest.param(2, "device", False, marks=pytest.mark.slow),
        pytest.param(2, "tfdata", False, marks=pytest.mark.slow),
    ],
)
def test_every_op_outside_xla_has_a_gpu_kernel(tiny_mnist, replicas, input_path, jit):
    trainer = Trainer(
        trainer_settings(batch_size=16, input=input_path, jit_compile=jit),
        make_strategy(cpu_replicas=replicas).strategy,
        tiny_mnist,
    )
    graphs = helpers.graphs(trainer, tiny_mnist)
    checked = {"train_checked"} if input_path == "device" else set()  # run again after a non-finite call
    assert set(graphs) == {"train", "evaluate", "any_replica", "from_replica_0"} | checked
    for name, graph in graphs.items():
        assert ops_without_gpu_kernel(graph) == [], name
    classifier = Classifier(trainer.weights())
    assert ops_without_gpu_kernel(classifier.serve.get_concrete_function().graph.as_graph_def()) == []
    run_schedule(trainer, tiny_mnist, 5)  # and the traced code runs
    assert trainer.step == 5 and trainer.trace_count == 1


@pytest.mark.parametrize("jit", [None, False])
def test_with_xla_each_replica_step_is_two_launches_on_its_own_device(tiny_mnist, jit):
    """On 2 replicas (XLA by default) each replica's batch and gradients, and after the all-reduce its update of
    every weight, are one XLA launch each on the replica's device: no gather, matmul or variable update is left
    to TensorFlow's executor. Without XLA they are (the check can fail): the lean call's update is one
    ResourceApplyGradientDescent a weight."""
    trainer = Trainer(
        trainer_settings(batch_size=16, jit_compile=jit), make_strategy(cpu_replicas=2).strategy, tiny_mnist
    )
    nodes = nodes_outside_xla(helpers.graphs(trainer)["train"])
    updates = {"AssignSubVariableOp", "ResourceApplyGradientDescent"}
    executor_ops = {n.op for n in nodes} & ({"GatherV2", "MatMul"} | updates)
    launches = [n.device.split("device:")[-1] for n in nodes if compiled_by_xla(n)]
    if jit is None:
        assert executor_ops == set()
        assert sorted(launches) == ["CPU:0", "CPU:0", "CPU:1", "CPU:1"], launches
    else:
        assert executor_ops == {"GatherV2", "MatMul", "ResourceApplyGradientDescent"}
        assert launches == []
    run_schedule(trainer, tiny_mnist, 5)
    assert trainer.step == 5


@pytest.mark.parametrize("replicas", [1, 2])
def test_no_step_of_a_runs_call_checks_for_nan_and_the_checked_calls_steps_do(tiny_mnist, replicas):
    """The call a run makes has no finiteness check in its steps (it checks the weights once, after its loop);
    the call that runs again after a non-finite one checks every step (the test can fail both ways)."""
    trainer = Trainer(trainer_settings(batch_size=16), make_strategy(cpu_replicas=replicas).strategy, tiny_mnist)
    graphs = helpers.graphs(trainer)
    assert "IsFinite" not in loop_body_ops(graphs["train"])
    assert "IsFinite" in loop_body_ops(graphs["train_checked"])


def training_loop_limit(graph_def):
    """(the ops of the training call's loop condition, the node that gives its `i < limit` the limit: a Const in
    the condition, or the While node's input that the condition's argument stands for)."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    nodes = list(graph_def.node) + [n for f in functions.values() for n in f.node_def]
    loops = [n for n in nodes if n.op in ("While", "StatelessWhile")]
    assert len(loops) == 1, [n.name for n in loops]
    cond = functions[loops[0].attr["cond"].func.name]
    (less,) = [n for n in cond.node_def if n.op == "Less"]
    limit = less.input[1].split(":")[0]
    inside = {n.name: n for n in cond.node_def}
    args = [a.name for a in cond.signature.input_arg]
    source = inside.get(limit) or next(n for n in nodes if n.name == loops[0].input[args.index(limit)].split(":")[0])
    return {n.op for n in cond.node_def}, source


@pytest.mark.parametrize("replicas,input_path", [(1, "device"), (2, "device"), (2, "tfdata")])
def test_the_loop_goes_on_by_its_step_count_never_a_device_value(tiny_mnist, replicas, input_path):
    """The call's loop condition compares step counters with limits and nothing else (no non-finite flag from the
    device: on a GPU that was a copy to the host every step); with the device input the limit is steps_per_loop,
    a constant of the trace (XLA knows the trip count), over tf.data the call's step count."""
    trainer = Trainer(
        trainer_settings(batch_size=16, steps_per_loop=7, input=input_path),
        make_strategy(cpu_replicas=replicas).strategy,
        tiny_mnist,
    )
    ops, limit = training_loop_limit(helpers.graphs(trainer)["train"])
    assert ops <= {"Less", "Const", "Identity"}
    if input_path == "device":
        assert limit.op == "Const" and tf.make_ndarray(limit.attr["value"].tensor) == 7
    else:
        assert limit.op == "Placeholder" and limit.name == "num_steps"


def test_xla_compiles_the_call_with_a_known_trip_count(tiny_mnist):
    """One replica, device input: XLA's optimised HLO of the whole call has a while loop whose trip count XLA
    itself found (steps_per_loop), the form a GPU runs without asking the host after each step."""
    trainer = Trainer(trainer_settings(batch_size=16, steps_per_loop=7), make_strategy().strategy, tiny_mnist)
    hlo = trainer._call.experimental_get_compiler_ir(tf.constant(7), *trainer.input.traced_args())(
        stage="optimized_hlo"
    )
    assert hlo.count(" while(") == 1 and '"known_trip_count":{"n":"7"}' in hlo


@pytest.mark.parametrize("replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_each_replica_holds_its_data_on_its_own_device(tiny_mnist, replicas):
    choice = make_strategy(cpu_replicas=replicas)
    settings = trainer_settings(batch_size=8)
    trainer = Trainer(settings, choice.strategy, tiny_mnist)
    helpers.graphs(trainer)
    _, _, indices = trainer.input.call_args(0, 2)
    local = choice.strategy.experimental_local_results
    _, _, fresh = Trainer(settings, choice.strategy, tiny_mnist).input.call_args(0, 2)
    for drawn, untouched in zip(local(indices), local(fresh), strict=True):  # tracing for a look draws no epoch's order
        np.testing.assert_array_equal(drawn.numpy(), untouched.numpy())
    expected = [tf.DeviceSpec.from_string(d) for d in choice.devices]
    evaluation = helpers.evaluator(trainer, tiny_mnist)
    for name, value in [
        ("features", trainer.input.features),
        ("targets", trainer.input.targets),
        ("batch indices", indices),
        ("test features", evaluation._test[0]),
        ("test labels", evaluation._test[1]),
    ]:
        placed = [tf.DeviceSpec.from_string(t.device) for t in local(value)]
        assert [(d.device_type, d.device_index) for d in placed] == [
            (d.device_type.upper(), d.device_index) for d in expected
        ], name
    assert local(trainer.input.features)[0].dtype == tf.float32 and local(evaluation._test[0])[0].dtype == tf.float32
    assert local(indices)[0].dtype == tf.int64


def test_multi_worker_asks_for_nccl_on_gpus_only():
    implementation = tf.distribute.experimental.CommunicationImplementation
    assert communication(["/gpu:0", "/gpu:1"]) == implementation.NCCL
    assert communication(["/cpu:0"]) == implementation.AUTO
    assert communication(["/gpu:0", "/cpu:0"]) == implementation.AUTO


WORKER = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from distmnist.environment import tfquiet
tf = tfquiet.import_tensorflow()
import helpers
from helpers import make_tiny_mnist, trainer_settings
from kernel_registry import collective_dtypes, ops_without_gpu_kernel
from distmnist.training.cluster import parse_tf_config
from distmnist.training.trainer import Trainer
from distmnist.training.strategy import make_strategy
choice = make_strategy(cluster=parse_tf_config(os.environ["TF_CONFIG"]), collective_timeout_s=60,
                       cluster_start_timeout_s=60)
report = {{}}
for input_path in ("device", "tfdata"):
    mnist = make_tiny_mnist()
    trainer = Trainer(trainer_settings(batch_size=8, input=input_path), choice.strategy, mnist)
    for name, graph in helpers.graphs(trainer, mnist).items():
        report[f"{{input_path}} {{name}}"] = {{"missing": ops_without_gpu_kernel(graph),
                                           "collectives": sorted(collective_dtypes(graph))}}
    # the float32 count, all-reduced across workers
    report[f"{{input_path}} accuracy"] = helpers.evaluator(trainer, mnist).evaluate()[0]
print("REPORT " + json.dumps(report), flush=True)
# Leave together: a worker that exits while its peer still reads the last all-reduce resets the connection.
open(os.path.join({done!r}, str(choice.cluster.task_index)), "w").close()
while len(os.listdir({done!r})) < 2:
    time.sleep(0.1)
os._exit(0)
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_a_two_worker_cluster_reduces_no_int32_and_needs_no_host_only_op(tmp_path):
    addresses = [f"localhost:{p}" for p in free_ports(2)]
    (tmp_path / "done").mkdir()
    script = WORKER.format(tests=os.path.join(REPO, "tests"), done=str(tmp_path / "done"))
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script],
                cwd=REPO,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
    report = json.loads(next(line for line in outputs[0][0].splitlines() if line.startswith("REPORT "))[7:])
    reduced = set()
    for name, found in report.items():
        if name.endswith("accuracy"):
            assert 0.0 <= found <= 1.0
            continue
        assert found["missing"] == [], name
        reduced |= {tuple(c) for c in found["collectives"]}
    assert ("CollectiveReduceV2", tf.float32.as_datatype_enum) in reduced  # the walk does see the collectives
    assert not [c for c in reduced if c[1] == INT32], reduced
    assert {name for name in report if name.endswith("evaluate")} == {"device evaluate", "tfdata evaluate"}


# The copies between host and device that one training step makes on GPUs, per replica, and why (docs/gpus.md,
# "Host and device in a step"). One replica: none, XLA compiles the whole call, its loop counter included.
# Several: TensorFlow's loop keeps its int32 counter on the host (so that it decides the next iteration without
# asking the device), and each replica's XLA launches take it, and the step's `active` flag, in device memory.
PER_REPLICA_CROSSINGS = [
    ("Less", "bool", "StatefulPartitionedCall (XLA)"),  # active -> the SGD launch
    ("loop argument", "int32", "PartitionedCall (XLA)"),
]  # the counter -> the batch's launch


@pytest.mark.parametrize("replicas", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_a_step_copies_between_host_and_device_only_what_is_named(tiny_mnist, replicas):
    strategy = make_strategy(cpu_replicas=replicas).strategy if replicas > 1 else make_strategy().strategy
    trainer = Trainer(trainer_settings(batch_size=16), strategy, tiny_mnist)
    found = step_crossings(helpers.graphs(trainer)["train"], trainer.compiled_whole_call)
    expected = [] if replicas == 1 else sorted(PER_REPLICA_CROSSINGS * replicas)
    assert found == expected


def _branch_ops(graph_def) -> list:
    """The If and StatelessIf nodes of a graph and of every function in its library."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [n for n in nodes if n.op in ("If", "StatelessIf")]


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_shorter_calls_masked_iterations_compute_nothing_on_cpus_and_branch_nowhere_on_gpus(tiny_mnist, replicas):
    """A call of fewer than steps_per_loop steps: on CPUs each iteration's batch and gradients sit in a branch taken
    only for the call's own steps (the trained numbers are the same: the steps-per-call tests), so a short call
    costs what its steps cost; on GPUs there is no branch (XLA would copy each step's choice to the host), and the
    masked iterations compute and are discarded."""
    cpus = make_strategy(cpu_replicas=replicas).strategy if replicas > 1 else make_strategy().strategy
    trainer = Trainer(trainer_settings(batch_size=16), cpus, tiny_mnist)
    assert trainer.skips_masked_steps and len(_branch_ops(helpers.graphs(trainer)["train"])) == replicas  # one each
    tfdata = Trainer(trainer_settings(batch_size=16, input="tfdata"), cpus, tiny_mnist)
    assert (
        not tfdata.skips_masked_steps and _branch_ops(helpers.graphs(tfdata)["train"]) == []
    )  # every iteration a step
    gpus = tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(replicas)])
    on_gpus = Trainer(trainer_settings(batch_size=16), gpus, tiny_mnist)
    assert not on_gpus.skips_masked_steps and _branch_ops(helpers.graphs(on_gpus)["train"]) == []


def test_the_crossing_check_finds_a_planted_one():
    """The check can fail: a loop that uses its counter in an op TensorFlow runs itself (a Cast's GPU kernel takes
    int32 in device memory; the loop keeps its counter on the host) copies it every step; the same loop with the
    counter's work inside XLA does not show it as an op, only as the launch's input."""

    def planted(x):
        return tf.while_loop(lambda i, y: i < 7, lambda i, y: (i + 1, y + tf.cast(i, tf.float32)), (0, x))[1]

    graph = tf.function(planted, autograph=False).get_concrete_function(tf.zeros([4])).graph.as_graph_def()
    assert step_crossings(graph) == [("loop argument", "int32", "Cast")]
    assert step_crossings(graph, compiled_whole=True) == []


def test_a_branch_chosen_on_the_host_copies_nothing_one_chosen_on_the_device_does():
    """An If keeps its predicate in host memory on a GPU (its kernel's HostMemory("cond")): a predicate from the
    int32 loop counter (Less on int32 runs on the host) crosses nothing, as the trainer's masked steps have it; one
    from a float32 comparison, made on the device, is copied to the host every step, and the check says so."""

    def masked(on_device):
        def body(i, y):
            chosen = tf.reduce_sum(y) < 3.0 if on_device else i < 5
            return i + 1, tf.cond(chosen, lambda: y * 2.0, lambda: y)

        return lambda x: tf.while_loop(lambda i, y: i < 7, body, (0, x))[1]

    for on_device, expected in ((False, []), (True, [("Less", "bool", "StatelessIf")])):
        graph = (
            tf.function(masked(on_device), autograph=False).get_concrete_function(tf.zeros([4])).graph.as_graph_def()
        )
        assert step_crossings(graph) == expected, on_device


def test_memory_types_follow_tensorflows_kernels():
    """What the crossings are read from, checked on ops whose kernels say: Less on int32 runs on the host (its
    DEFAULT kernel keeps x, y and z there), on float32 on the device; a resource handle is always on the host."""
    graph = (
        tf.function(lambda a, b, v: (a < 3, b < 3.0, v.read_value()), autograph=False)
        .get_concrete_function(tf.constant(1), tf.constant(1.0), tf.Variable(1.0))
        .graph.as_graph_def()
    )
    by_type = {
        (n.op, n.attr["T"].type if "T" in n.attr else None): memory_types(n)
        for n in graph.node
        if n.op in ("Less", "ReadVariableOp")
    }
    assert by_type[("Less", INT32)] == (["host", "host"], ["host"])
    assert by_type[("Less", tf.float32.as_datatype_enum)] == (["device", "device"], ["device"])
    assert by_type[("ReadVariableOp", None)] == (["host"], ["device"])
    branch = (
        tf.function(lambda p, x: tf.cond(p, lambda: x + 1, lambda: x), autograph=False)
        .get_concrete_function(tf.constant(True), tf.constant(1.0))
        .graph.as_graph_def()
    )
    (choice,) = [n for n in branch.node if n.op in ("If", "StatelessIf")]
    assert memory_types(choice) == (["host", "device"], ["device"])


NCCL = tf.float32.as_datatype_enum


def test_the_single_host_gpu_graph_with_nccl_is_ready_too(tiny_mnist):
    """What GPUs get: MirroredStrategy over two GPUs with NCCL's all-reduce. TensorFlow builds that strategy and
    traces its functions on a machine without GPUs (soft placement runs the eager set-up on the CPU; the traced
    graphs name the GPUs), so the GPU graph itself is checked here: every op outside XLA has a GPU kernel, the
    gradients' all-reduce is NCCL's on float32, each replica's batch and gradients are one XLA launch on its own
    GPU, and a step's host-device copies are the named ones (docs/gpus.md)."""
    strategy = tf.distribute.MirroredStrategy(
        devices=["/gpu:0", "/gpu:1"], cross_device_ops=tf.distribute.NcclAllReduce()
    )
    trainer = Trainer(trainer_settings(batch_size=16), strategy, tiny_mnist)
    graphs = helpers.graphs(trainer, tiny_mnist)
    for name, graph in graphs.items():
        assert ops_without_gpu_kernel(graph) == [], name
    assert collective_dtypes(graphs["train"]) == {("NcclAllReduce", NCCL)}
    gradient_launches = [
        n.device for n in nodes_outside_xla(graphs["train"]) if compiled_by_xla(n) and n.op == "PartitionedCall"
    ]
    assert sorted(d.split("device:")[-1] for d in gradient_launches) == ["GPU:0", "GPU:1"]
    assert step_crossings(graphs["train"], trainer.compiled_whole_call) == sorted(PER_REPLICA_CROSSINGS * 2)

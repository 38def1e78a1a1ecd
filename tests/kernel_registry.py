"""What TensorFlow's kernel registry says a GPU can run, checked against traced graphs on any machine.

TensorFlow registers its GPU kernels in every build, so a CPU-only machine can still say, for each op of a
traced function, whether a GPU (or the DEFAULT device type, which GPU placement also uses) has a kernel for its
dtypes. An op without one is placed on the host by soft placement, and its inputs and outputs are copied
between host and device every time it runs. Ops inside XLA-compiled functions are compiled by XLA instead and
are not checked.
"""

import functools

from tensorflow.core.framework import graph_pb2, types_pb2
from tensorflow.python.framework import dtypes as tf_dtypes
from tensorflow.python.framework import kernels, op_def_registry

GPU_DEVICE_TYPES = ("GPU", "DEFAULT")
# Ops that run on the host by design, wherever the model runs: tf.data's iterator hands batches over there.
HOST_BY_DESIGN = {
    "IteratorGetNext",
    "IteratorGetNextAsOptional",
    "OptionalGetValue",
    "OptionalHasValue",
    "MultiDeviceIteratorGetNextFromShard",
    "AnonymousIteratorV3",
    "MakeIterator",
}
COLLECTIVE_OPS = {
    "CollectiveReduce",
    "CollectiveReduceV2",
    "CollectiveReduceV3",
    "CollectiveGather",
    "CollectiveGatherV2",
    "CollectiveBcastSend",
    "CollectiveBcastRecv",
    "CollectiveBcastSendV2",
    "CollectiveBcastRecvV2",
    "CollectiveAllToAllV2",
    "CollectiveAllToAllV3",
    "NcclAllReduce",
    "NcclReduce",
    "NcclBroadcast",
}
XLA_MUST_COMPILE = "_XlaMustCompile"


@functools.cache
def _gpu_kernels(op: str) -> tuple:
    """Each GPU/DEFAULT kernel of op as (device type, {attr name: allowed dtypes}, its host-memory arguments)."""
    return tuple(
        (
            k.device_type,
            {c.name: frozenset(c.allowed_values.list.type) for c in k.constraint},
            frozenset(k.host_memory_arg),
        )
        for k in kernels.get_registered_kernels_for_op(op).kernel
        if k.device_type in GPU_DEVICE_TYPES
    )


def _attr_types(node, name: str) -> list:
    attr = node.attr.get(name)
    if attr is None:
        return []
    return list(attr.list.type) if attr.HasField("list") else [attr.type]


def _gpu_kernel(node):
    """The kernel a GPU would run the node with, as _gpu_kernels gives it: a GPU one whose type constraints fit,
    else a DEFAULT one; None when there is neither."""
    fitting = [
        k
        for k in _gpu_kernels(node.op)
        if all(set(_attr_types(node, name)) <= allowed for name, allowed in k[1].items())
    ]
    return next((k for k in fitting if k[0] == "GPU"), fitting[0] if fitting else None)


def has_gpu_kernel(node) -> bool:
    return _gpu_kernel(node) is not None


def _called_functions(node, library: dict) -> list:
    """The functions a node runs: a call by name, or function-valued attributes (calls, While, If, Case)."""
    names = [node.op] if node.op in library else []
    for attr in node.attr.values():
        if attr.HasField("func"):
            names.append(attr.func.name)
        elif attr.HasField("list"):
            names += [f.name for f in attr.list.func]
    return [n for n in names if n in library]


def compiled_by_xla(node) -> bool:
    attr = node.attr.get(XLA_MUST_COMPILE)
    return attr is not None and attr.b


def nodes_outside_xla(graph_def: graph_pb2.GraphDef) -> list:
    """Every node TensorFlow itself executes: the graph's and those of the functions it calls, not descending
    into functions that XLA compiles."""
    library = {f.signature.name: f for f in graph_def.library.function}
    found, seen = [], set()

    def walk(nodes):
        for node in nodes:
            found.append(node)
            if compiled_by_xla(node):
                continue
            for name in _called_functions(node, library):
                function = library[name]
                if name in seen or (XLA_MUST_COMPILE in function.attr and function.attr[XLA_MUST_COMPILE].b):
                    continue
                seen.add(name)
                walk(function.node_def)

    walk(graph_def.node)
    return found


def ops_without_gpu_kernel(graph_def: graph_pb2.GraphDef) -> list:
    """(op, {dtype attrs}) for each op outside XLA that no GPU kernel can run, host-side ops by design apart."""
    library = {f.signature.name for f in graph_def.library.function}
    missing = set()
    for node in nodes_outside_xla(graph_def):
        if node.op in library or node.op in HOST_BY_DESIGN or has_gpu_kernel(node):
            continue
        types = tuple(
            sorted(
                (name, tuple(_attr_types(node, name)))
                for name in node.attr
                if node.attr[name].HasField("type") or node.attr[name].list.type
            )
        )
        missing.add((node.op, types))
    return sorted(missing)


def collective_dtypes(graph_def: graph_pb2.GraphDef) -> set:
    """(op, dtype) of every collective in the graph and the functions it calls (XLA ones included)."""
    found = set()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        if node.op in COLLECTIVE_OPS:
            found.add((node.op, node.attr["T"].type))
    return found


def loop_body_ops(graph_def: graph_pb2.GraphDef) -> set:
    """The op types a step of the graph's one while loop runs: its body and every function it calls, XLA's too."""
    library = {f.signature.name: f for f in graph_def.library.function}
    loops = [
        n
        for n in list(graph_def.node) + [n for f in library.values() for n in f.node_def]
        if n.op in ("While", "StatelessWhile")
    ]
    assert len(loops) == 1, [n.name for n in loops]
    found, seen, pending = set(), set(), [loops[0].attr["body"].func.name]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in library[name].node_def:
            found.add(node.op)
            pending += _called_functions(node, library)
    return found


# --- where a GPU keeps each tensor of a step, and where the step copies between host and device ---------------
#
# TensorFlow's own rule (tensorflow/core/framework/memory_types.cc, MemoryTypesForNode), for a node on a GPU: an
# op with a kernel keeps each argument in device memory except those its kernel registers as host memory
# (`host_memory_arg`) and strings and resource handles; a function call (PartitionedCall, While, ...) and a
# function's own arguments keep int32 on the host too; an XLA launch (what a `_XlaMustCompile` call becomes)
# takes its resources on the host and every other argument, and gives every result, in device memory. An edge
# whose two ends disagree is a copy between host and device each time it runs.
HOST, DEVICE = "host", "device"
ALWAYS_ON_HOST = {types_pb2.DT_STRING, types_pb2.DT_STRING_REF, types_pb2.DT_RESOURCE}
FUNCTION_CALLS = {
    "PartitionedCall",
    "StatefulPartitionedCall",
    "While",
    "StatelessWhile",
    "If",
    "StatelessIf",
    "SymbolicGradient",
}


def _flat_args(node, args) -> list:
    """(arg name, dtype) for each tensor of an op's input or output args, in order."""
    flat = []
    for arg in args:
        if arg.type_list_attr:
            flat += [(arg.name, t) for t in node.attr[arg.type_list_attr].list.type]
            continue
        dtype = arg.type or node.attr[arg.type_attr].type
        count = node.attr[arg.number_attr].i if arg.number_attr else 1
        flat += [(arg.name, dtype)] * count
    return flat


def memory_types(node) -> tuple:
    """([memory of each input tensor], [memory of each output tensor]) of a node placed on a GPU."""
    op_def = op_def_registry.get(node.op)
    inputs, outputs = _flat_args(node, op_def.input_arg), _flat_args(node, op_def.output_arg)
    if compiled_by_xla(node):
        return ([HOST if t in ALWAYS_ON_HOST else DEVICE for _, t in inputs], [DEVICE] * len(outputs))
    kernel = _gpu_kernel(node)
    host_args = kernel[2] if kernel else frozenset()  # an If's or a Case's branch choice, on the host
    # A function's int32 arguments and results live on the host, as do those of an op without a GPU kernel.
    int32_on_host = kernel is None or node.op in FUNCTION_CALLS

    def memory(name, dtype):
        on_host = name in host_args or dtype in ALWAYS_ON_HOST or (dtype == types_pb2.DT_INT32 and int32_on_host)
        return HOST if on_host else DEVICE

    return [memory(n, t) for n, t in inputs], [memory(n, t) for n, t in outputs]


def _output_index(producer, arg_name: str, index: int) -> int:
    """The flat index of output `arg_name:index` of a function body's node."""
    names = [name for name, _ in _flat_args(producer, op_def_registry.get(producer.op).output_arg)]
    return names.index(arg_name) + index


def step_crossings(graph_def: graph_pb2.GraphDef, compiled_whole: bool = False) -> list:
    """Each copy between host and device that one step of the call's training loop makes on a GPU, as
    (producer op, dtype, consumer op), for the loop body and the functions it calls that TensorFlow runs itself.
    A call XLA compiles whole (`compiled_whole`) makes none: XLA keeps the loop and its counter on the device."""
    library = {f.signature.name: f for f in graph_def.library.function}
    loops = [n for n in nodes_outside_xla(graph_def) if n.op in ("While", "StatelessWhile")]
    if compiled_whole or not loops:
        return []
    crossings, pending, seen = [], [loops[0].attr["body"].func.name], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        function = library[name]
        nodes = {n.name: n for n in function.node_def}
        args = {
            a.name: (HOST if a.type in ALWAYS_ON_HOST or a.type == types_pb2.DT_INT32 else DEVICE, a.type)
            for a in function.signature.input_arg
        }
        for node in function.node_def:
            if not compiled_by_xla(node):
                pending += _called_functions(node, library)
            wanted, _ = memory_types(node)
            flat_inputs = _flat_args(node, op_def_registry.get(node.op).input_arg)
            for position, source in enumerate(i for i in node.input if not i.startswith("^")):
                if ":" in source:
                    producer_name, arg_name, index = source.split(":")
                    producer = nodes[producer_name]
                    given = memory_types(producer)[1][_output_index(producer, arg_name, int(index))]
                    origin = producer.op
                else:
                    given, _ = args[source]
                    origin = "loop argument"
                if given != wanted[position]:
                    dtype = tf_dtypes.as_dtype(flat_inputs[position][1]).name
                    crossings.append((origin, dtype, node.op + (" (XLA)" if compiled_by_xla(node) else "")))
    return sorted(crossings)

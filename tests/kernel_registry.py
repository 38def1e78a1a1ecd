"""What TensorFlow's kernel registry says a GPU can run, checked against traced graphs on any machine.

TensorFlow registers its GPU kernels in every build, so a CPU-only machine can still say, for each op of a
traced function, whether a GPU (or the DEFAULT device type, which GPU placement also uses) has a kernel for its
dtypes. An op without one is placed on the host by soft placement, and its inputs and outputs are copied
between host and device every time it runs. Ops inside XLA-compiled functions are compiled by XLA instead and
are not checked.
"""

import functools

from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import kernels

GPU_DEVICE_TYPES = ("GPU", "DEFAULT")
# Ops that run on the host by design, wherever the model runs: tf.data's iterator hands batches over there.
HOST_BY_DESIGN = {"IteratorGetNext", "IteratorGetNextAsOptional", "OptionalGetValue", "OptionalHasValue",
                  "MultiDeviceIteratorGetNextFromShard", "AnonymousIteratorV3", "MakeIterator"}
COLLECTIVE_OPS = {"CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3", "CollectiveGather",
                  "CollectiveGatherV2", "CollectiveBcastSend", "CollectiveBcastRecv", "CollectiveBcastSendV2",
                  "CollectiveBcastRecvV2", "CollectiveAllToAllV2", "CollectiveAllToAllV3", "NcclAllReduce",
                  "NcclReduce", "NcclBroadcast"}
XLA_MUST_COMPILE = "_XlaMustCompile"


@functools.lru_cache(maxsize=None)
def _gpu_kernels(op: str) -> tuple:
    """Each GPU/DEFAULT kernel of op as {attr name: allowed dtypes}."""
    return tuple({c.name: frozenset(c.allowed_values.list.type) for c in k.constraint}
                 for k in kernels.get_registered_kernels_for_op(op).kernel if k.device_type in GPU_DEVICE_TYPES)


def _attr_types(node, name: str) -> list:
    attr = node.attr.get(name)
    if attr is None:
        return []
    return list(attr.list.type) if attr.HasField("list") else [attr.type]


def has_gpu_kernel(node) -> bool:
    return any(all(set(_attr_types(node, name)) <= allowed for name, allowed in kernel.items())
               for kernel in _gpu_kernels(node.op))


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
        types = tuple(sorted((name, tuple(_attr_types(node, name))) for name in node.attr
                             if node.attr[name].HasField("type") or node.attr[name].list.type))
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
    loops = [n for n in list(graph_def.node) + [n for f in library.values() for n in f.node_def]
             if n.op in ("While", "StatelessWhile")]
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

"""Where a compiled training step's time goes on a CPU: inside XLA's executable, kernel by kernel, or outside it.

A contender (solo.py) runs its timed steps once more under its framework's profiler, with XLA's per-kernel trace
events on (XLA_FLAGS `--xla_cpu_enable_xprof_traceme`, set before the framework starts: `TRACE_FLAG`). XLA's
CPU runtime then records each kernel it runs (a fusion, a dot, a copy: the optimised HLO's instructions) as an
event on the thread that starts it, inside the runtime's own events (`ThunkExecutor::Execute`, and
TensorFlow's `CpuExecutable::...`). From the trace, per step, in microseconds:

- wall: the timed run's seconds over its steps;
- in_xla: the time during which XLA's executable runs (the union of the runtime's events on every thread);
- outside: wall minus in_xla: the host's work between two compiled calls (for JAX's single call, almost none);
- each kernel's share: from its start to the next kernel's start (or the end of the executable's run), so the
  shares add up to in_xla. Not the event's own length: an Eigen matmul's event ends when its work is handed to
  the thread pool (XLA waits for it at the next kernel that needs its result), so its event alone would leave
  most of its time to nobody. Where two kernels run at once, the time goes to the one that started last.
- all_reduce: with two replicas or more, the time during which the all-reduce between them runs (the union of its
  events on every thread): JAX's is a kernel of its XLA program (`all-reduce.N`, waiting at its rendezvous for the
  other replicas included), so it lies within in_xla; distmnist's, on logical CPUs, is TensorFlow's
  ReductionToOneDevice between each replica's two XLA launches (its gradients, then its update), its sums `AddN`
  ops of TensorFlow's executor that start when both replicas' gradients are there, so it lies outside.

TensorFlow and JAX run the same XLA CPU runtime code (different versions), so the same reading applies to both.
"""

import bisect
import glob
import os
import re

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme"
# The runtime's events: a kernel is an event inside one of these on the same thread, and they are not kernels.
_EXECUTABLE = re.compile(r"^(ThunkExecutor::Execute|CpuExecutable::)")
# The runtime's other events (and its markers of a kernel's end), and control flow, whose events hold its body's
# kernels.
_NOT_KERNEL = re.compile(
    r"^(ThunkExecutor|SlinkyThreadPool|ThreadpoolListener|CpuExecutable|BlockUntilReady|Wait|"
    r"Rendezvous|InvokeRendezvous|Memory(Allocation|Deallocation)|end: )|"
    r"^(while|conditional|call)(\.\d+)?$"
)
# The all-reduce between replicas: XLA's kernel, or the ops of TensorFlow's cross-device reductions (`name:type`).
_ALL_REDUCE = re.compile(r"^all-reduce(-start|-done)?(\.\d+)?$|:(AddN|CollectiveReduceV2|NcclAllReduce)$")
TOP = 8  # the largest kernels reported by name


def trace_file(logdir: str) -> str:
    """The XSpace file a profiler wrote under logdir (TensorFlow's and JAX's write the same layout)."""
    found = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if len(found) != 1:
        raise ValueError(f"expected one trace under {logdir}, found {len(found)}")
    return found[0]


def _merged(intervals) -> list:
    """The union of intervals as sorted, disjoint [start, end] pairs."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _inside(spans: list, starts: list, start: int, end: int):
    """The span of the merged spans that holds [start, end], or None."""
    at = bisect.bisect_right(starts, start) - 1
    return spans[at] if at >= 0 and end <= spans[at][1] else None


def _events(space):
    """(runtime spans, kernels, all-reduce spans): every thread's executable events as (start, end), its kernel
    events as (start, end, name), and its all-reduce's events as (start, end), in picoseconds."""
    runtime, kernels, all_reduce = [], [], []
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            base = line.timestamp_ns * 1000
            events = [
                (base + e.offset_ps, base + e.offset_ps + e.duration_ps, names[e.metadata_id]) for e in line.events
            ]
            spans = _merged((start, end) for start, end, name in events if _EXECUTABLE.search(name))
            starts = [start for start, _ in spans]
            runtime += spans
            all_reduce += [(start, end) for start, end, name in events if _ALL_REDUCE.search(name)]
            kernels += [
                (start, end, name)
                for start, end, name in events
                if not _NOT_KERNEL.search(name) and _inside(spans, starts, start, end)
            ]
    return runtime, kernels, all_reduce


def breakdown(xspace_bytes: bytes, steps: int, seconds: float) -> dict:
    """The per-step figures of a trace of `steps` steps that took `seconds`: wall, in_xla, outside, all_reduce
    (0 with one replica), and the largest kernels by their share (us). Needs TensorFlow's protobuf for the trace
    (any process with TensorFlow)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace_bytes)
    runtime, kernels, all_reduce = _events(space)
    if not kernels:
        raise ValueError(f"no XLA kernel events in the trace: was XLA_FLAGS {TRACE_FLAG} set before XLA started?")
    runs = _merged(runtime)
    run_starts = [start for start, _ in runs]
    kernels.sort()
    shares = {}
    for (start, end, name), following in zip(kernels, kernels[1:] + [None], strict=True):
        run_end = _inside(runs, run_starts, start, end)[1]
        until = min(following[0], run_end) if following else run_end
        shares[name] = shares.get(name, 0) + until - start
    per_step_us = 1e-6 / steps  # picoseconds over the run -> microseconds a step
    wall = seconds * 1e6 / steps
    in_xla = sum(end - start for start, end in runs) * per_step_us
    return {
        "steps": steps,
        "wall_us": wall,
        "in_xla_us": in_xla,
        "outside_us": wall - in_xla,
        "all_reduce_us": sum(end - start for start, end in _merged(all_reduce)) * per_step_us,
        "top": [[name, ps * per_step_us] for name, ps in sorted(shares.items(), key=lambda kv: -kv[1])[:TOP]],
    }

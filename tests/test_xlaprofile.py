"""xlaprofile.breakdown: a trace's XLA kernels, and the time between them, read as the bench reads them."""

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from bench import xlaprofile

US = 1_000_000  # picoseconds


def _trace(lines) -> bytes:
    """An XSpace with one plane; lines: [(name, timestamp_ns, [(event name, start us, end us), ...])]."""
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    ids = {}
    for line_name, timestamp_ns, events in lines:
        line = plane.lines.add(name=line_name, timestamp_ns=timestamp_ns)
        for name, start, end in events:
            if name not in ids:
                ids[name] = len(ids) + 1
                plane.event_metadata[ids[name]].id = ids[name]
                plane.event_metadata[ids[name]].name = name
            line.events.add(metadata_id=ids[name], offset_ps=start * US, duration_ps=(end - start) * US)
    return space.SerializeToString()


def test_each_kernel_has_the_time_until_the_next_one_and_the_host_the_time_outside_the_executable():
    trace = _trace(
        [
            (
                "python",
                0,
                [("CpuExecutable::ExecuteAsyncOnStream", 0, 100), ("EagerExecute", 120, 130)],
            ),  # the host between two calls: outside the executable
            (
                "worker",
                0,
                [
                    ("ThunkExecutor::Execute", 0, 100),
                    ("while.7", 1, 99),
                    ("gather_fusion", 0, 10),
                    ("MatMul.23", 10, 20),  # an Eigen matmul whose threads run on until 70
                    ("SlinkyThreadPool::Await", 12, 20),
                    ("select_subtract_fusion", 70, 75),
                    ("end: select_subtract_fusion", 75, 75),
                    ("copy.1", 75, 80),
                    ("AddN", 150, 170),
                ],
            ),  # a TensorFlow op outside XLA's executable: not a kernel
        ]
    )
    got = xlaprofile.breakdown(trace, steps=2, seconds=200e-6)
    top = got.pop("top")
    assert got == pytest.approx({"steps": 2, "wall_us": 100.0, "in_xla_us": 50.0, "outside_us": 50.0})
    # per step: gather 10 / 2, the matmul 10..70 / 2, the select 70..75 / 2, the copy 75..100 (the run's end) / 2
    assert [name for name, _ in top] == ["MatMul.23", "copy.1", "gather_fusion", "select_subtract_fusion"]
    assert [us for _, us in top] == pytest.approx([30.0, 12.5, 5.0, 2.5])
    assert sum(us for _, us in top) == pytest.approx(got["in_xla_us"])


def test_a_trace_without_kernel_events_names_the_flag():
    trace = _trace([("python", 0, [("EagerExecute", 0, 100)])])
    with pytest.raises(ValueError, match="--xla_cpu_enable_xprof_traceme"):
        xlaprofile.breakdown(trace, steps=1, seconds=1e-4)

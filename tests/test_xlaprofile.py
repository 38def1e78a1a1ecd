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
    assert got == pytest.approx(
        {"steps": 2, "wall_us": 100.0, "in_xla_us": 50.0, "outside_us": 50.0, "all_reduce_us": 0.0}
    )  # "AddN" alone is no cross-device reduction
    # per step: gather 10 / 2, the matmul 10..70 / 2, the select 70..75 / 2, the copy 75..100 (the run's end) / 2
    assert [name for name, _ in top] == ["MatMul.23", "copy.1", "gather_fusion", "select_subtract_fusion"]
    assert [us for _, us in top] == pytest.approx([30.0, 12.5, 5.0, 2.5])
    assert sum(us for _, us in top) == pytest.approx(got["in_xla_us"])


def test_a_trace_without_kernel_events_names_the_flag():
    trace = _trace([("python", 0, [("EagerExecute", 0, 100)])])
    with pytest.raises(ValueError, match="--xla_cpu_enable_xprof_traceme"):
        xlaprofile.breakdown(trace, steps=1, seconds=1e-4)


def test_the_all_reduce_between_replicas_is_timed_inside_xla_or_outside_it():
    """JAX's all-reduce is a kernel of its program (its rendezvous wait inside it, not a kernel); distmnist's is
    TensorFlow's AddN between two XLA launches. A memory event is not a kernel either."""
    trace = _trace(
        [
            (
                "replica 0",
                0,
                [
                    ("ThunkExecutor::Execute", 0, 100),
                    ("dot.1", 0, 40),
                    ("all-reduce.21", 40, 90),
                    ("InvokeRendezvous", 45, 85),
                    ("MemoryDeallocation", 86, 86),
                    ("copy.2", 90, 100),
                ],
            ),
            (
                "replica 1",
                0,
                [("ThunkExecutor::Execute", 0, 100), ("dot.1", 0, 60), ("all-reduce.21", 60, 90), ("copy.2", 90, 100)],
            ),
        ]
    )
    got = xlaprofile.breakdown(trace, steps=1, seconds=100e-6)
    assert got["in_xla_us"] == pytest.approx(100.0) and got["outside_us"] == pytest.approx(0.0)
    assert got["all_reduce_us"] == pytest.approx(50.0)  # the union of both replicas' all-reduce: 40..90
    assert {name for name, _ in got["top"]} == {"dot.1", "all-reduce.21", "copy.2"}

    tensorflow = _trace(
        [
            (
                "tf_Compute",
                0,
                [
                    ("CpuExecutable::ExecuteAsyncOnStream", 0, 40),
                    ("fusion.1", 0, 40),
                    ("while/body/_1/while/AddN:AddN", 45, 55),
                    ("while/body/_1/while/AddN_2:AddN", 55, 60),
                    ("CpuExecutable::ExecuteAsyncOnStream", 70, 100),
                    ("fusion.2", 70, 100),
                ],
            ),
        ]
    )
    got = xlaprofile.breakdown(tensorflow, steps=1, seconds=100e-6)
    assert got["in_xla_us"] == pytest.approx(70.0) and got["outside_us"] == pytest.approx(30.0)
    assert got["all_reduce_us"] == pytest.approx(15.0)  # outside XLA, and not a kernel of it


def test_one_replica_has_no_all_reduce():
    trace = _trace([("worker", 0, [("ThunkExecutor::Execute", 0, 10), ("fusion", 0, 10)])])
    assert xlaprofile.breakdown(trace, steps=1, seconds=1e-5)["all_reduce_us"] == 0

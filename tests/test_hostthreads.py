"""How a run uses its host's cores (hostthreads.py): the plan as a pure function, what is in effect once TensorFlow
has started, and a run's own process on a CPU whose oneDNN path trains bfloat16."""

import os
import subprocess
import sys

import pytest

from distmnist.training import devices, hostthreads
from distmnist.training.hostthreads import HostThreads


def plan(**given):
    values = dict(cores=2, on_cpu=True, local_replicas=1, batch_size=128, split_batch=True) | given
    return hostthreads.plan(**values)


def test_the_users_pools_stand_as_given_and_the_batch_whole():
    assert plan(intra_op=3) == HostThreads(3, 0, 1)
    assert plan(inter_op=4, local_replicas=2) == HostThreads(0, 4, 1)


def test_the_oneDNN_graph_path_on_two_cores_runs_two_streams_one_thread_an_op():
    assert plan() == HostThreads(1, 2, 2)
    assert plan(batch_size=512) == HostThreads(1, 2, 2)


def test_replicas_are_chains_of_their_own():
    assert plan(local_replicas=2) == HostThreads(1, 2, 1)  # bfloat16: a stream a replica
    assert plan(local_replicas=4) == HostThreads(1, 4, 1)


def test_tensorflows_defaults_where_the_chains_cannot_fill_the_cores():
    assert plan(split_batch=False) == hostthreads.TENSORFLOW_DEFAULTS  # float32 on one replica: XLA's whole call
    # float32's numbers stay bit for bit: fewer threads an op can change XLA's sums
    assert plan(local_replicas=2, split_batch=False) == hostthreads.TENSORFLOW_DEFAULTS
    assert plan(cores=8, batch_size=128) == hostthreads.TENSORFLOW_DEFAULTS  # 2 parts of 64 rows at most
    assert plan(cores=4, local_replicas=2, batch_size=64) == hostthreads.TENSORFLOW_DEFAULTS  # 2 chains, 4 cores
    assert plan(cores=1) == hostthreads.TENSORFLOW_DEFAULTS
    assert plan(on_cpu=False) == hostthreads.TENSORFLOW_DEFAULTS
    assert plan(batch_size=100) == hostthreads.TENSORFLOW_DEFAULTS  # no two parts of 64 rows


def test_more_cores_more_streams_while_each_keeps_64_rows():
    assert plan(cores=8, batch_size=512) == HostThreads(1, 8, 8)
    assert plan(cores=4, batch_size=256) == HostThreads(1, 4, 4)


def test_in_amx_tiles_parts_keep_128_rows_and_a_lone_chain_runs_on_one_thread():
    assert plan(tiles=True) == HostThreads(1, 1, 1)  # batch 128: whole, one op at a time, one thread each
    assert plan(tiles=True, batch_size=256) == HostThreads(1, 2, 2)
    assert plan(tiles=True, batch_size=512) == HostThreads(1, 2, 2)
    assert plan(tiles=True, local_replicas=2) == HostThreads(1, 2, 1)
    assert plan(tiles=True, cores=8, batch_size=512) == HostThreads(1, 4, 4)
    assert plan(tiles=True, split_batch=False) == hostthreads.TENSORFLOW_DEFAULTS  # float32, or XLA asked for
    assert plan(tiles=True, intra_op=2) == HostThreads(2, 0, 1)


def test_which_precisions_run_in_tiles():
    amx = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert devices.in_tiles("mixed_bfloat16", amx)
    assert not devices.in_tiles("mixed_bfloat16", amx, onednn_off=True)
    assert not devices.in_tiles("mixed_float16", amx | {"amx_fp16"})  # float16 is emulated on CPUs
    assert not devices.in_tiles("float32", amx)
    assert not devices.in_tiles("mixed_bfloat16", {"avx512f", "avx512_bf16"})  # AMD Zen 4


def test_part_sizes_cover_the_batch():
    assert hostthreads.part_sizes(128, 2) == [64, 64]
    assert hostthreads.part_sizes(129, 2) == [64, 65]
    assert hostthreads.part_sizes(10, 1) == [10]


def test_once_tensorflow_has_started_its_pools_stand_and_the_batch_is_whole(caplog):
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # TensorFlow has started (as it has in this test process anyway)
    in_effect = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    planned = HostThreads(in_effect[0] + 1, in_effect[1] + 1, 2)
    assert hostthreads.apply(planned, asked=False) == HostThreads(*in_effect, 1)
    assert "not applied" not in caplog.text
    assert hostthreads.apply(HostThreads(*in_effect, 2), asked=False) == HostThreads(*in_effect, 2)


def test_the_describing_line():
    assert hostthreads.TENSORFLOW_DEFAULTS.describe() == "TensorFlow's defaults"
    assert HostThreads(1, 2, 2).describe() == "1 thread an op, 2 ops at once; each replica's batch in 2 streams"
    assert HostThreads(4, 0, 1).describe() == "4 threads an op, TensorFlow's default ops at once"


NATIVE_BF16 = devices.precision_support(devices.cpu_flags(), []).native["mixed_bfloat16"]
# batch 128 in bfloat16: two streams of 64 rows, or in AMX tiles the batch whole on one thread
BF16_AT_128 = (
    "1 thread an op, 1 op at once"
    if devices.in_tiles("mixed_bfloat16", devices.cpu_flags(), devices.onednn_switched_off())
    else "1 thread an op, 2 ops at once; each replica's batch in 2 streams"
)


@pytest.mark.slow
@pytest.mark.skipif(not NATIVE_BF16 or len(os.sched_getaffinity(0)) != 2, reason="needs 2 cores with bfloat16 hardware")
@pytest.mark.parametrize(
    "flags,threads",
    [
        (["--precision=mixed_bfloat16"], BF16_AT_128),
        (
            ["--precision=mixed_bfloat16", "--batch_size=256"],
            "1 thread an op, 2 ops at once; each replica's batch in 2 streams",
        ),
        (["--precision=mixed_bfloat16", "--intra_op_threads=2"], "2 threads an op, TensorFlow's default ops at once"),
        (["--precision=mixed_bfloat16", "--cpu_replicas=2"], "1 thread an op, 2 ops at once"),
        (["--cpu_replicas=2"], "TensorFlow's defaults"),
        ([], "TensorFlow's defaults"),
    ],
)
def test_a_run_on_two_cores_says_how_it_uses_them(tmp_path, flags, threads):
    """The run's own process: the plan applied before TensorFlow starts, and said in its set-up."""
    done = subprocess.run(
        [sys.executable, "-m", "distmnist.train", "--max_steps=3", f"--logdir={tmp_path}", "--run_name=t", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"host threads:         {threads}\n" in done.stdout

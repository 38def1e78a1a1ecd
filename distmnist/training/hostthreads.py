"""How a run uses its host's CPU cores, decided once, before TensorFlow starts (its thread pools are fixed then).

TensorFlow runs a graph's ops on its inter-op threads and splits each op over its intra-op pool. distmnist's step
is a chain of small ops, and on a few cores splitting each one costs more than it gains: oneDNN runs any matmul
whose operands fit in L2 on one thread anyway (TensorFlow's ExecuteSingleThreadedGemm: at batch 512 in bfloat16,
every layer-1 matmul), leaving a core idle where nothing else is ready, and Eigen's element-wise ops fight the
matmuls for the same pool. The cores go further as independent chains of ops, each op on one thread: the replicas
this process trains are such chains, and without XLA in a low precision (the oneDNN graph path) each replica's
batch is split into `streams` parts, each its own forward and backward chain (stepmaths.gradients). When the
chains fill the cores, the pools are one thread an op and a thread a chain; otherwise TensorFlow's defaults stand.

In AMX tiles (bfloat16 on Intel Xeons from the 4th generation) a matmul's fixed costs weigh more beside its fast
multiply: a part keeps 128 rows at least, and a replica's batch too small for two runs as one chain of ops on one
thread even where that leaves a core idle (on a 2-core Xeon with AMX, bfloat16 at batch 128: 1.15x two streams of
64 rows, and 1.1x one thread an op with two ops at once; docs/performance.md has the measurements).

float32 keeps TensorFlow's defaults: its numbers stay bit for bit (a split batch sums in another order, and XLA's
CPU matmuls sum in another order on a pool of another size: on the Zen 4, one step's outputs at one thread against
two differed at 2-50 rows a replica and at 320, 384, 768 and 1024 or more). Its replicas gain from the same pools
(--intra_op_threads=1 --inter_op_threads=2 on two cores), numbers aside. docs/performance.md has the measurements.
"""

import dataclasses
import os

from absl import logging

MIN_STREAM_ROWS = 64  # no part of a batch smaller: below it a matmul is mostly its fixed costs
MIN_TILE_STREAM_ROWS = 128  # the same in AMX tiles


@dataclasses.dataclass(frozen=True)
class HostThreads:
    """TensorFlow's pools (0: its default) and the parts each replica's batch is trained in."""

    intra_op: int
    inter_op: int
    streams: int = 1

    def describe(self) -> str:
        """One line for the run's set-up."""

        def counted(n: int, what: str) -> str:
            return f"{n} {what}{'' if n == 1 else 's'}" if n else f"TensorFlow's default {what}s"

        pools = (
            f"{counted(self.intra_op, 'thread')} an op, {counted(self.inter_op, 'op')} at once"
            if self.intra_op or self.inter_op
            else "TensorFlow's defaults"
        )
        return pools + (f"; each replica's batch in {self.streams} streams" if self.streams > 1 else "")


TENSORFLOW_DEFAULTS = HostThreads(0, 0, 1)


def part_sizes(rows: int, streams: int) -> list[int]:
    """The rows of each of a batch's `streams` parts, as even as they come (the last takes the rest)."""
    return [rows // streams] * (streams - 1) + [rows - (streams - 1) * (rows // streams)]


def cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or taskset's cpuset included)."""
    return len(os.sched_getaffinity(0))


def plan(
    *,
    cores: int,
    on_cpu: bool,
    local_replicas: int,
    batch_size: int,
    split_batch: bool,
    tiles: bool = False,
    intra_op: int = 0,
    inter_op: int = 0,
) -> HostThreads:
    """Pure. cores: this process's; on_cpu: whether it trains on its CPU; local_replicas: the replicas it trains;
    batch_size: per replica; split_batch: whether the step may run its batch in parts (a low precision without XLA);
    tiles: whether that precision's matmuls run in AMX tiles (devices.in_tiles); intra_op/inter_op: the user's
    --intra_op_threads/--inter_op_threads (either given: as given, the batch whole)."""
    if intra_op or inter_op:
        return HostThreads(intra_op, inter_op, 1)
    if not on_cpu or cores < 2 or not split_batch:
        return TENSORFLOW_DEFAULTS
    min_rows = MIN_TILE_STREAM_ROWS if tiles else MIN_STREAM_ROWS
    streams = max(1, min(cores // max(local_replicas, 1), batch_size // min_rows))
    chains = local_replicas * streams
    if chains < cores and not tiles:
        return TENSORFLOW_DEFAULTS
    return HostThreads(1, chains, streams)


def apply(threads: HostThreads, asked: bool) -> HostThreads:
    """Sets TensorFlow's pools as planned and returns what is in effect. Once TensorFlow has started (a sweep's
    later points, a notebook) its pools stay as they are: the batch is then split only where they are the planned
    ones. asked: whether the user gave the pools' sizes (their not being applied is then said)."""
    import tensorflow as tf

    threading = tf.config.threading
    try:
        if threads.intra_op:
            threading.set_intra_op_parallelism_threads(threads.intra_op)
        if threads.inter_op:
            threading.set_inter_op_parallelism_threads(threads.inter_op)
        return threads
    except RuntimeError:
        current = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
        if current == (threads.intra_op, threads.inter_op):
            return threads
        if asked:
            logging.warning("TensorFlow has started: --intra_op_threads/--inter_op_threads not applied")
        return HostThreads(*current, 1)

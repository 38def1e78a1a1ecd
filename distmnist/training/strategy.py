"""Building the tf.distribute strategy from plain arguments: devices.plan (a pure function) chooses it from the
visible GPUs; make_strategy then configures those GPUs (visibility, memory growth) or splits the CPU into logical
devices, and builds the strategy, so it must run before TensorFlow has initialised its devices."""

import dataclasses
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

from distmnist.common.errors import UserError
from distmnist.training import devices
from distmnist.training.cluster import Cluster
from distmnist.training.devices import configure_gpus


@dataclasses.dataclass(frozen=True)
class StrategyChoice:
    strategy: tf.distribute.Strategy
    name: str
    devices: tuple
    cluster: Cluster | None = None  # set for multi-worker runs

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def _logical_cpus(count: int) -> list:
    """Returns `count` logical CPU device names, splitting the CPU into that many if TensorFlow has not started."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            pass  # TensorFlow has started: the devices it has are all there will be
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise UserError(
            f"--cpu_replicas={count} needs {count} logical CPUs but TensorFlow already started with "
            f"{len(logical)}; choose the replica count before any TensorFlow op runs"
        )
    return [d.name for d in logical[:count]]


def _bound_cluster_waits(collective_timeout_s: int, cluster_start_timeout_s: int) -> None:
    """Makes MultiWorkerMirroredStrategy fail instead of hang: its peer health check (every 30 s, three
    10 s tries, by default) is scaled so that a lost peer aborts the collectives within about
    collective_timeout_s, naming the peer, and the start-up wait for all workers (default: forever) is bounded.
    These are class attributes of TensorFlow's internal CollectiveAllReduceExtended, read when the strategy
    is built; without them the strategy still works, with TensorFlow's defaults."""
    try:
        from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended
    except ImportError:
        logging.warning("cannot tune the multi-worker health check on this TensorFlow; using its defaults")
        return
    quarter = max(1, collective_timeout_s // 4)
    CollectiveAllReduceExtended._check_health_interval = quarter
    CollectiveAllReduceExtended._check_health_timeout = quarter
    CollectiveAllReduceExtended._check_health_retry_limit = 3
    CollectiveAllReduceExtended._check_health_initial_timeout = cluster_start_timeout_s


def communication(local_devices: Sequence[str]) -> "tf.distribute.experimental.CommunicationImplementation":
    """NCCL when every local device is a GPU (TensorFlow's AUTO picks it only when asked); else AUTO (rings over
    gRPC, for CPU workers)."""
    implementation = tf.distribute.experimental.CommunicationImplementation
    if local_devices and all("gpu" in d.lower() for d in local_devices):
        return implementation.NCCL
    return implementation.AUTO


def _multi_worker(
    cluster: Cluster, gpus: int, collective_timeout_s: int, cluster_start_timeout_s: int, gpu_memory_growth: bool
) -> StrategyChoice:
    _bound_cluster_waits(collective_timeout_s, cluster_start_timeout_s)
    local = configure_gpus(gpus, gpu_memory_growth) or ["/cpu:0"]
    implementation = communication(local)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout_s, implementation=implementation
    )
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.spec), task_type=cluster.task_type, task_id=cluster.task_index, rpc_layer="grpc"
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    collectives = "NCCL" if implementation == implementation.NCCL else "ring"  # AUTO picks rings on CPUs
    return StrategyChoice(
        strategy,
        f"MultiWorkerMirroredStrategy ({cluster.num_workers} workers, {collectives} collectives)",
        tuple(f"{cluster.task_type}:{cluster.task_index}{d}" for d in local),
        cluster,
    )


def device_plan(
    num_gpus: int | None = None, cpu_replicas: int = 0, kind: str = "auto", cluster: Cluster | None = None
) -> devices.DevicePlan:
    """devices.plan for this process's GPUs, without starting TensorFlow: what make_strategy will build."""
    return devices.plan(
        tf.config.get_visible_devices("GPU"),
        tf.config.list_physical_devices("GPU"),
        num_gpus,
        cpu_replicas,
        kind,
        in_cluster=cluster is not None,
        driver_present=devices.nvidia_driver_present(),
    )


def make_strategy(
    num_gpus: int | None = None,
    cpu_replicas: int = 0,
    kind: str = "auto",
    cluster: Cluster | None = None,
    collective_timeout_s: int = 60,
    cluster_start_timeout_s: int = 600,
    gpu_memory_growth: bool = True,
    chosen: devices.DevicePlan | None = None,
) -> StrategyChoice:
    """Builds the strategy `devices.plan` chooses from this process's visible GPUs (see there): multi-worker
    with a cluster, MirroredStrategy over 2+ GPUs (or over cpu_replicas >= 2 logical CPUs, every GPU left
    alone), else a one-device strategy. The process sees only the GPUs it uses, with memory growth as asked.
    chosen: device_plan's answer for the same arguments, where the caller needed it first (None: made here)."""
    chosen = chosen or device_plan(num_gpus, cpu_replicas, kind, cluster)
    for warning in chosen.warnings:
        logging.warning("%s", warning)
    if chosen.kind == "multi_worker":
        assert cluster is not None  # plan chooses multi_worker only in a cluster
        return _multi_worker(cluster, chosen.gpus, collective_timeout_s, cluster_start_timeout_s, gpu_memory_growth)
    if chosen.kind == "logical_cpus":
        configure_gpus(0)
        names = _logical_cpus(chosen.cpu_replicas)
        strategy = tf.distribute.MirroredStrategy(
            devices=names, cross_device_ops=tf.distribute.ReductionToOneDevice(reduce_to_device=names[0])
        )
        return StrategyChoice(strategy, "MirroredStrategy (logical CPUs)", tuple(names))
    gpus = configure_gpus(chosen.gpus, gpu_memory_growth)
    if chosen.kind == "mirrored":
        names = gpus or ["/cpu:0"]
        return StrategyChoice(tf.distribute.MirroredStrategy(devices=names), "MirroredStrategy", tuple(names))
    device = gpus[0] if gpus else "/cpu:0"
    return StrategyChoice(tf.distribute.OneDeviceStrategy(device), "OneDeviceStrategy", (device,))

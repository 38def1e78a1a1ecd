"""Choosing the tf.distribute strategy: one pure function of plain arguments."""

import dataclasses
from typing import Optional

import tensorflow as tf
from absl import logging

from distmnist.errors import UserError


@dataclasses.dataclass(frozen=True)
class StrategyChoice:
    strategy: tf.distribute.Strategy
    name: str
    devices: tuple

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def set_host_threads(intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
    """Thread pools for ops (0 keeps TensorFlow's default); must run before TensorFlow starts."""
    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        logging.warning("TensorFlow has started: --intra_op_threads/--inter_op_threads not applied")


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
        raise UserError(f"--cpu_replicas={count} needs {count} logical CPUs but TensorFlow already started with "
                        f"{len(logical)}; choose the replica count before any TensorFlow op runs")
    return [d.name for d in logical[:count]]


def make_strategy(num_gpus: Optional[int] = None, cpu_replicas: int = 0) -> StrategyChoice:
    """Two or more GPUs: MirroredStrategy over exactly that many; one GPU or none: one device.

    num_gpus None means every visible GPU; asking for more than are visible uses what exists, with a warning.
    cpu_replicas >= 2 runs a real N-replica MirroredStrategy on N logical CPU devices, GPUs or not.
    """
    if num_gpus is not None and num_gpus < 0:
        raise UserError(f"--num_gpus must be >= 0, got {num_gpus}")
    if cpu_replicas < 0:
        raise UserError(f"--cpu_replicas must be >= 0, got {cpu_replicas}")
    if cpu_replicas >= 2:
        devices = _logical_cpus(cpu_replicas)
        strategy = tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0]))
        return StrategyChoice(strategy, "MirroredStrategy (logical CPUs)", tuple(devices))
    visible = [d.name.replace("physical_device:", "") for d in tf.config.list_physical_devices("GPU")]
    wanted = len(visible) if num_gpus is None else num_gpus
    if wanted > len(visible):
        logging.warning("--num_gpus=%d requested but %d GPU(s) visible: using %d", wanted, len(visible), len(visible))
        wanted = len(visible)
    if wanted >= 2:
        devices = visible[:wanted]
        return StrategyChoice(tf.distribute.MirroredStrategy(devices=devices), "MirroredStrategy", tuple(devices))
    device = visible[0] if wanted == 1 else "/cpu:0"
    return StrategyChoice(tf.distribute.OneDeviceStrategy(device), "OneDeviceStrategy", (device,))

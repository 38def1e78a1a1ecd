"""The strategy and its devices: `devices.plan` decides from the GPUs a process can use (fabricated lists here:
a GPU host's, with GPUs hidden, too few, none), `make_strategy` builds what it says on this CPU."""

import pytest
import tensorflow as tf

from distmnist.common.errors import UserError
from distmnist.training import devices
from distmnist.training.strategy import make_strategy

FOUR = ["/physical_device:GPU:0", "/physical_device:GPU:1", "/physical_device:GPU:2", "/physical_device:GPU:3"]


PLANS = [  # (visible, physical, plan's arguments, kind, GPUs used, warning): one test, as each case is pure
    (FOUR, FOUR, {}, "mirrored", 4, ""),  # every visible GPU
    (FOUR, FOUR, {"num_gpus": 2}, "mirrored", 2, ""),
    (FOUR, FOUR, {"num_gpus": 1}, "one_device", 1, ""),
    (FOUR, FOUR, {"num_gpus": 0}, "one_device", 0, ""),  # the CPU
    (FOUR[:1], FOUR, {}, "one_device", 1, ""),  # CUDA_VISIBLE_DEVICES or the process left one: one, not four
    ([], FOUR, {}, "one_device", 0, ""),  # the process hid them all (as the tests do): the CPU, no /gpu:0
    (
        [],
        FOUR,
        {"num_gpus": 2},
        "one_device",
        0,
        "--num_gpus=2 requested but 0 GPU(s) visible, 4 more hidden from this process: using 0",
    ),
    (FOUR[:2], FOUR[:2], {"num_gpus": 3}, "mirrored", 2, "--num_gpus=3 requested but 2 GPU(s) visible: using 2"),
    (
        [],
        [],
        {"driver_present": True},
        "one_device",
        0,
        "this machine has an NVIDIA driver but TensorFlow registered no GPU: training on the CPU",
    ),
    ([], [], {}, "one_device", 0, ""),  # a CPU machine
    (FOUR, FOUR, {"cpu_replicas": 2}, "logical_cpus", 0, ""),  # logical CPUs leave every GPU alone
    (FOUR, FOUR, {"kind": "one_device"}, "one_device", 4, ""),
    (FOUR[:1], FOUR, {"kind": "mirrored"}, "mirrored", 1, ""),
    (FOUR[:2], FOUR, {"in_cluster": True}, "multi_worker", 2, ""),
    ([], FOUR, {"in_cluster": True}, "multi_worker", 0, ""),
]


def test_devices_are_planned_from_the_visible_gpus():
    for visible, physical, args, kind, gpus, warning in PLANS:
        plan = devices.plan(visible, physical, **args)
        assert (plan.kind, plan.gpus) == (kind, gpus), (visible, physical, args)
        assert [w.split(" (")[0] for w in plan.warnings] == ([warning] if warning else []), (visible, physical, args)


def test_bad_plans_are_user_errors():
    with pytest.raises(UserError, match="--strategy=multi_worker needs TF_CONFIG"):
        devices.plan(FOUR, FOUR, kind="multi_worker")
    with pytest.raises(UserError, match="--cpu_replicas cannot be combined with a multi-worker cluster"):
        devices.plan(FOUR, FOUR, cpu_replicas=2, in_cluster=True)


def test_this_process_hides_its_gpus_and_trains_on_the_cpu():
    """conftest hides every GPU from the test process: whatever the machine has, nothing here is on a GPU."""
    assert tf.config.get_visible_devices("GPU") == []
    choice = make_strategy()
    assert choice.devices == ("/cpu:0",) and isinstance(choice.strategy, tf.distribute.OneDeviceStrategy)


def test_no_gpu_falls_back_to_one_device_on_the_cpu():
    choice = make_strategy()
    assert isinstance(choice.strategy, tf.distribute.OneDeviceStrategy)
    assert choice.num_replicas == 1 and choice.devices == ("/cpu:0",)


def test_more_gpus_than_visible_uses_what_exists_with_a_warning(caplog):
    choice = make_strategy(num_gpus=3)
    assert choice.num_replicas == 1
    assert "--num_gpus=3 requested but 0 GPU(s) visible" in caplog.text and ": using 0 (" in caplog.text


@pytest.mark.parametrize("replicas", [2, 4])
def test_cpu_replicas_give_a_real_mirrored_strategy(replicas):
    choice = make_strategy(cpu_replicas=replicas)
    assert isinstance(choice.strategy, tf.distribute.MirroredStrategy)
    assert choice.num_replicas == replicas
    assert len(set(choice.devices)) == replicas


def test_bad_requests_raise_user_errors():
    with pytest.raises(UserError, match="--num_gpus must be >= 0"):
        make_strategy(num_gpus=-1)
    with pytest.raises(UserError, match="needs 9 logical CPUs"):
        make_strategy(cpu_replicas=9)

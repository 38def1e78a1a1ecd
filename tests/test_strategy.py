import pytest
import tensorflow as tf

from distmnist.errors import UserError
from distmnist.strategy import make_strategy


def test_no_gpu_falls_back_to_one_device_on_the_cpu():
    choice = make_strategy()
    assert isinstance(choice.strategy, tf.distribute.OneDeviceStrategy)
    assert choice.num_replicas == 1 and choice.devices == ("/cpu:0",)


def test_more_gpus_than_visible_uses_what_exists_with_a_warning(caplog):
    choice = make_strategy(num_gpus=3)
    assert choice.num_replicas == 1
    assert "--num_gpus=3 requested but 0 GPU(s) visible: using 0" in caplog.text


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

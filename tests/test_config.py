"""One source per setting: TrainConfig's fields carry the help; the flags and the README's table are made from
them, and a config that exists is valid."""

import dataclasses
import os
import re

import pytest

from distmnist.common import config
from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError

from helpers import REPO


def test_the_readme_flags_table_is_the_one_the_settings_make():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert config.flags_table() in readme
    assert set(re.findall(r"^\| `--(\w+)` \|", readme, re.M)) == {name for name, *_ in config.field_descriptions()}


def test_every_flag_is_made_from_its_field():
    from absl import flags

    from distmnist import train

    defined = flags.FlagValues()
    train.define_flags(defined)
    for name, default, _, help_text, _, choices in config.field_descriptions():
        flag = defined[name]
        assert flag.default == default and flag.help.endswith(help_text.replace("`", "").replace("**", "")), name
        if choices:
            assert tuple(flag.parser.enum_values) == choices


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "--batch_size must be a positive integer, got 0"),
        ({"learning_rate": float("nan")}, "--learning_rate must be a positive finite number"),
        ({"input": "disk"}, "--input must be one of device, tfdata"),
        ({"run_name": "a/b"}, "--run_name must be a plain directory name"),
        ({"logdir": ""}, "--logdir must not be empty"),
        ({"export_dir": ""}, "--export_dir must not be empty; leave it unset instead"),
        ({"events_dir": "runs/x\0y"}, "--events_dir must not contain a NUL byte"),
        ({"run_name": "r\udcff"}, "--run_name must be UTF-8 text"),  # a byte the command line could not decode
        ({"run_name": "r" * 201}, "--run_name is 201 bytes long; it must be at most 200"),
        ({"run_name": "é" * 101}, "--run_name is 202 bytes long"),  # bytes, not characters
        (
            {"logdir": "runs/" + "x" * 256},
            "--logdir holds a name of 256 bytes (xxxxxxxxxxxxxxxxxxxx...); file names end at 255 bytes",
        ),
        ({"seed": 2**63}, "--seed must be at most 9,223,372,036,854,775,807 (tf.random and tf.data take int64 seeds)"),
        ({"seed": -(2**63) - 1}, "--seed must be at least -9,223,372,036,854,775,808"),
        (
            {"max_steps": 2**63},
            "--max_steps must be at most 9,223,372,036,854,775,807 (TensorFlow takes it as an int64)",
        ),
        ({"keep_checkpoints": 2**64}, "--keep_checkpoints must be at most 9,223,372,036,854,775,807"),
        ({"shuffle_buffer": 10**9}, "--shuffle_buffer must be at most 1,000,000 (tf.data reserves the whole buffer"),
        ({"steps_per_loop": 10**8}, "--steps_per_loop must be at most 10,000"),
        ({"cpu_replicas": 100_000}, "--cpu_replicas must be at most 64"),
        ({"intra_op_threads": 2**31 - 1}, "--intra_op_threads must be at most 1,024"),
        ({"collective_timeout_s": 2**31}, "--collective_timeout_s must be at most 2,147,483,647"),
        ({"profile_steps": "1,9223372036854775808"}, "--profile_steps must read START,END with 0 <= START < END"),
    ],
)
def test_a_config_that_exists_is_valid(changes, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TrainConfig(**changes)
    with pytest.raises(UserError, match=re.escape(message)):
        dataclasses.replace(TrainConfig(), **changes)


def test_the_limits_are_within_what_tensorflow_takes_and_the_seeds_are_all_of_it():
    """The seed's bounds are TensorFlow's own: both ends initialise the model and order the data, one past them
    does not; every other limit is an int64 or tighter."""
    import tensorflow as tf

    from distmnist.training.inputs import EpochOrder
    from distmnist.training.model import MLP

    low, high, _ = config.INT_LIMITS["seed"]
    for seed in (low, high):
        TrainConfig(seed=seed)
        assert MLP(seed=seed).weights[0].shape == (784, 512)
        assert sorted(EpochOrder(10, 10, seed, epochs=1).next_epoch()) == list(range(10))
    with pytest.raises(ValueError, match="out-of-range integer"):
        MLP(seed=high + 1)
    assert all(high <= config.INT64_MAX for _, high, _ in config.INT_LIMITS.values())
    tf.constant(config.INT64_MAX, tf.int64)
    with pytest.raises(ValueError):
        tf.constant(config.INT64_MAX + 1, tf.int64)


def test_the_longest_run_name_takes_its_claim_of_either_kind(tmp_path, monkeypatch):
    """A run name of the most bytes allowed names its directory, its claim file and its lease's temporary file."""
    from distmnist.runs import runclaim

    name = "r" * config.MAX_RUN_NAME_BYTES
    monkeypatch.setenv("DISTMNIST_LEASE_BEAT_S", "0.01")
    for kind in ("lock", "lease"):
        monkeypatch.setenv("DISTMNIST_RUN_CLAIM", kind)
        claim = runclaim.take(str(tmp_path / kind), name)
        os.mkdir(tmp_path / kind / name)
        claim.release()
    assert len(f".{name}.claim.{'0' * 32}".encode()) <= config.NAME_MAX


def test_the_trainers_settings_are_made_from_the_config():
    """Every field the trainer shares with the config carries the config's value (none the default), XLA as
    devices.resolve_xla decides it (here: tf.data, so off), the streams as runsetup.host_threads gives them."""
    from distmnist.runs import runsetup
    from distmnist.training.trainer import TrainerSettings

    config = TrainConfig(
        batch_size=64,
        learning_rate=0.5,
        seed=7,
        steps_per_loop=20,
        shuffle_buffer=500,
        input="tfdata",
        precision="mixed_bfloat16",
    )
    made = runsetup.trainer_settings(config, total_steps=4680, streams=2)
    shared = {f.name for f in dataclasses.fields(TrainerSettings)} - {
        "total_steps",
        "loss_scale_growth_steps",
        "jit_compile",
        "streams",
    }
    assert {name: getattr(made, name) for name in shared} == {name: getattr(config, name) for name in shared}
    assert {name: getattr(made, name) for name in shared} != {name: getattr(TrainConfig(), name) for name in shared}
    assert made.total_steps == 4680 and made.jit_compile is False and made.streams == 2

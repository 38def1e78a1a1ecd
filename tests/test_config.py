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
    assert set(re.findall(r"^\| `--(\w+)` \|", readme, re.M)) == {name for name, *_ in config.settings()}


def test_every_flag_is_made_from_its_field():
    from absl import flags

    from distmnist import train

    defined = flags.FlagValues()
    train.define_flags(defined)
    for name, default, _, help_text, _, choices in config.settings():
        flag = defined[name]
        assert flag.default == default and flag.help.endswith(help_text.replace("`", "").replace("**", "")), name
        if choices:
            assert tuple(flag.parser.enum_values) == choices


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "--batch_size must be a positive integer, got 0"),
    ({"learning_rate": float("nan")}, "--learning_rate must be a positive finite number"),
    ({"input": "disk"}, "--input must be one of device, tfdata"),
    ({"run_name": "a/b"}, "--run_name must be a plain directory name"),
])
def test_a_config_that_exists_is_valid(changes, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TrainConfig(**changes)
    with pytest.raises(UserError, match=re.escape(message)):
        dataclasses.replace(TrainConfig(), **changes)


def test_the_trainers_settings_are_made_from_the_config_and_default_as_it_does():
    from distmnist.runs import run
    from distmnist.training.trainer import TrainerSettings

    config = TrainConfig()
    made = run.trainer_settings(config, total_steps=4680)
    shared = {f.name for f in dataclasses.fields(TrainerSettings)} - {"total_steps", "loss_scale_growth_steps",
                                                                      "jit_compile"}
    assert {name: getattr(made, name) for name in shared} == {name: getattr(config, name) for name in shared}
    assert made.jit_compile == config.resolved_jit_compile()  # XLA as resolved (on this machine, for float32)
    assert TrainerSettings(total_steps=4680, jit_compile=True) == made  # its own defaults are the config's

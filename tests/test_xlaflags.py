"""XLA's CPU options: YNNPACK's dots asked for, a user's own choice kept, and XLA really taking them."""

import glob
import os
import subprocess
import sys

import pytest

from distmnist.environment import xlaflags


def test_ynnpack_dots_are_added_and_a_users_choice_is_kept():
    assert xlaflags.with_ynnpack_dots("") == "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    assert xlaflags.with_ynnpack_dots("--xla_dump_to=/d") == \
        "--xla_dump_to=/d --xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    mine = "--xla_cpu_experimental_ynn_fusion_type=reduce"
    assert xlaflags.with_ynnpack_dots(mine) == mine


COMPILE = """
from distmnist.environment import tfquiet
tf = tfquiet.import_tensorflow()
from distmnist.training.model import MLP
model = MLP()
tf.function(model, jit_compile=True)(tf.zeros([128, 784]))
"""


def entry_matmuls(tmp_path, xla_flags):
    """How the forward pass's three matmuls are compiled, as XLA dumps its optimised HLO: the kinds of the
    ENTRY computation's instructions whose op is a MatMul ("dot" or "kCustom", a YNNPACK fusion)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path} {xla_flags}".strip())
    subprocess.run([sys.executable, "-c", COMPILE], env=env, check=True, capture_output=True, timeout=300)
    (path,) = glob.glob(str(tmp_path / "*cpu_after_optimizations.txt"))
    entry = open(path).read().split("\nENTRY ", 1)[1]
    matmuls = [line for line in entry.splitlines() if 'op_type="MatMul"' in line]
    return sorted("kCustom" if "kind=kCustom" in line and "ynn_fusion" in line else
                  "dot" if " dot(" in line else line for line in matmuls)


@pytest.mark.slow
def test_xla_compiles_the_models_dots_with_ynnpack(tmp_path):
    """The entry points' import puts the flag in place before XLA reads it: the forward pass's three matmuls are
    YNNPACK fusions; under a user's own choice of reductions only they stay XLA's dots."""
    assert entry_matmuls(tmp_path / "default", "") == ["kCustom"] * 3
    assert entry_matmuls(tmp_path / "mine", "--xla_cpu_experimental_ynn_fusion_type=reduce") == ["dot"] * 3


def test_jax_in_the_bench_runs_with_the_users_flags_not_ours(monkeypatch):
    from bench import ownprocess

    monkeypatch.setattr(xlaflags, "added", True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/d --xla_cpu_experimental_ynn_fusion_type=dot,reduce")
    assert ownprocess.environment("jax", 2)["XLA_FLAGS"] == "--xla_dump_to=/d --xla_force_host_platform_device_count=2"
    assert ownprocess.environment("distmnist", 2)["XLA_FLAGS"] == \
        "--xla_dump_to=/d --xla_cpu_experimental_ynn_fusion_type=dot,reduce --xla_force_host_platform_device_count=2"
    monkeypatch.setattr(xlaflags, "added", False)  # the user's own choice: kept for JAX too
    assert "ynn_fusion_type" in ownprocess.environment("jax", 1)["XLA_FLAGS"]

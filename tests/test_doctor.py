"""`python -m distmnist.doctor`: a line per check, a verdict, --json, and the exit status that says whether this
machine can train on what it has (run on the CPU, and with a fake nvidia-smi listing GPUs TensorFlow lacks)."""

import json
import os
import stat

import pytest

from helpers import run_module

pytestmark = [pytest.mark.slow]

CHECKS = ["python", "tensorflow", "driver", "cuda libraries", "gpus", "xla", "all-reduce", "training"]


def test_a_cpu_machine_is_fine_and_says_so():
    result = run_module("distmnist.doctor", "--smoke_steps=30", unset=("TF_CPP_MIN_LOG_LEVEL",))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")][:-1] == \
        ["ok", "ok", "info", "info", "info", "ok", "ok", "ok"]
    assert "no NVIDIA driver" in result.stdout and "none: TensorFlow trains on the CPU" in result.stdout
    assert "2 logical CPUs: sum of 2 replicas correct" in result.stdout
    training = next(line for line in lines if " training " in line)
    assert "OneDeviceStrategy on /cpu:0: 30 steps" in training and "examples/s" in training
    assert lines[-1] == "verdict: this machine can train on its CPU"


def test_gpus_that_tensorflow_cannot_use_are_broken_and_json_says_why(tmp_path):
    fake = tmp_path / "nvidia-smi"  # the driver lists two GPUs; TensorFlow (CUDA hidden) registers none
    fake.write_text("#!/bin/sh\nprintf '0, NVIDIA L4, 23034, 570.86.15\\n1, NVIDIA L4, 23034, 570.86.15\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = run_module("distmnist.doctor", "--json", "--smoke_steps=0",
                        env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is False and list(checks) == CHECKS[:-1]
    assert checks["driver"]["status"] == "ok" and "570.86.15, 2 GPU(s)" in checks["driver"]["found"]
    assert checks["gpus"]["status"] == "FAIL"
    assert "lists 2 GPU(s), TensorFlow registered none" in checks["gpus"]["found"]
    assert checks["gpus"]["fix"]
    # TensorFlow's own words for why it registered no GPU, captured instead of hidden.
    assert checks["cuda libraries"]["status"] == "FAIL" and "TensorFlow said: " in checks["cuda libraries"]["found"]
    assert "cuInit" in checks["cuda libraries"]["found"] or "cuda drivers" in checks["cuda libraries"]["found"]


def test_an_old_driver_is_named(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0, Tesla T4, 15360, 470.57.02\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = run_module("distmnist.doctor", "--json", "--smoke_steps=0",
                        env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1 and checks["driver"]["status"] == "FAIL"
    assert "525.60.13" in checks["driver"]["fix"]

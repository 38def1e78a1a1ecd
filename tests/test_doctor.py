"""`python -m distmnist.doctor`: a line per check, a verdict, --json, and the exit status that says whether this
machine can train on what it has (run on the CPU, and with a fake nvidia-smi listing GPUs TensorFlow lacks)."""

import json
import os
import stat

import pytest

from distmnist.training import devices

from helpers import run_module

pytestmark = [pytest.mark.slow]

CHECKS = ["python", "tensorflow", "driver", "cuda libraries", "gpus", "precision", "xla", "all-reduce", "training"]


def no_driver(tmp_path) -> dict:
    """The environment of a machine without an NVIDIA driver, on any machine: no nvidia-smi on the PATH (an empty
    folder), no /proc/driver/nvidia (DISTMNIST_NVIDIA_PROC elsewhere); the test processes see no GPU either."""
    (tmp_path / "empty").mkdir()
    return {"PATH": str(tmp_path / "empty"), "DISTMNIST_NVIDIA_PROC": str(tmp_path / "no-driver")}


def test_a_cpu_machine_is_fine_and_says_so(tmp_path):
    result = run_module(
        "distmnist.doctor", "--smoke_steps=30", unset=("TF_CPP_MIN_LOG_LEVEL",), env=no_driver(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")][:-1] == [
        "ok",
        "ok",
        "info",
        "info",
        "info",
        "ok",
        "ok",
        "ok",
        "ok",
    ]
    assert "no NVIDIA driver" in result.stdout and "none: TensorFlow trains on the CPU" in result.stdout
    assert "2 logical CPUs: sum of 2 replicas correct" in result.stdout
    precision = next(line for line in lines if " precision " in line)
    support = devices.support_of([])  # as the doctor decides, TF_ENABLE_ONEDNN_OPTS included
    assert f"recommended --precision={support.recommended}" in precision
    assert ("bfloat16 native" if support.native["mixed_bfloat16"] else "bfloat16 emulated") in precision
    training = next(line for line in lines if " training " in line)
    assert "OneDeviceStrategy on /cpu:0: 30 steps" in training and "examples/s" in training
    assert lines[-1] == "verdict: this machine can train on its CPU"


def test_gpus_that_tensorflow_cannot_use_are_broken_and_json_says_why(tmp_path):
    fake = tmp_path / "nvidia-smi"  # the driver lists two GPUs; TensorFlow (CUDA hidden) registers none
    fake.write_text("#!/bin/sh\nprintf '0, NVIDIA L4, 23034, 570.86.15\\n1, NVIDIA L4, 23034, 570.86.15\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = run_module("distmnist.doctor", "--json", "--smoke_steps=0", env={"PATH": str(tmp_path)})
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
    result = run_module("distmnist.doctor", "--json", "--smoke_steps=0", env={"PATH": str(tmp_path)})
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1 and checks["driver"]["status"] == "FAIL"
    assert "525.60.13" in checks["driver"]["fix"]


def test_require_gpus_on_a_machine_without_one_stops_before_training_in_one_line(tmp_path):
    """What every launch path that asks for GPUs passes: a job that got none stops with the doctor's finding and
    status 2, which the job engines do not retry (Kubeflow's podFailurePolicy and ExitCode: 1-127 permanent)."""
    result = run_module(
        "distmnist.train",
        "--require_gpus",
        f"--logdir={tmp_path / 'logs'}",
        unset=("TF_CPP_MIN_LOG_LEVEL",),
        env=no_driver(tmp_path),
        timeout_s=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "distmnist.train: error: --require_gpus: TensorFlow registered no GPU for this process: no NVIDIA driver (no "
        "nvidia-smi): this machine trains on its CPU; nothing was trained (python -m distmnist.doctor has the whole "
        "report)"
    ]
    assert not (tmp_path / "logs").exists()
    # The driver lists a GPU that TensorFlow does not register: TensorFlow's own words for why are the finding.
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '0, NVIDIA L4, 23034, 570.86.15\\n'\n")
    fake.chmod(0o755)
    result = run_module(
        "distmnist.train",
        "--require_gpus",
        f"--logdir={tmp_path / 'logs'}",
        env={"PATH": str(fake.parent)},
        timeout_s=60,
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "registered no GPU for this process: TensorFlow said: " in result.stderr and "cuda" in result.stderr


def test_the_tests_that_need_no_driver_pass_on_a_machine_with_one(tmp_path):
    """As on a GPU host: an nvidia-smi that lists two GPUs first on the PATH (as /usr/bin's would be) and the
    driver's /proc file present. The tests that need no driver give their processes their own PATH and /proc,
    and decide devices from what the test process can use, so they pass there too."""
    import subprocess
    import sys

    from helpers import REPO

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '0, NVIDIA L4, 23034, 570.86.15\\n1, NVIDIA L4, 23034, 570.86.15\\n'\n")
    fake.chmod(0o755)
    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "DISTMNIST_NVIDIA_PROC": str(tmp_path / "version"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "tests/test_strategy.py",
            "tests/test_doctor.py::test_a_cpu_machine_is_fine_and_says_so",
            "tests/test_launch.py::test_local_cluster_gives_each_worker_its_own_gpus",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout

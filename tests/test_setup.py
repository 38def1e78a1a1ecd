"""The set-up commands on a machine whose python3 TensorFlow has no wheels for (3.14, say): make finds a
supported interpreter, or says in one line which Python to install, before any pip runs. And what pip installs:
the package, without the bench beside it."""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import REPO

pytestmark = [pytest.mark.slow]

FAKE_PYTHON_314 = """#!/bin/sh
case "$*" in *version_info*) exit 1 ;; esac
echo "Python 3.14.0"
"""


def make(tmp_path, *targets, extra_bin=()):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON_314)
    (bin_dir / "python3").chmod(0o755)
    for name, target in extra_bin:
        os.symlink(target, bin_dir / name)
    venv = tmp_path / "venv"
    return subprocess.run(
        ["/usr/bin/make", "--no-print-directory", "-n", f"VENV={venv}", *targets],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": str(bin_dir)},
        timeout=60,
    ), venv


def test_a_supported_python_is_found_beside_an_unsupported_python3(tmp_path):
    result, venv = make(tmp_path, f"{tmp_path}/venv/bin/python", extra_bin=[("python3.12", sys.executable)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"python3.12 -m venv {venv}"


def test_without_a_supported_python_make_says_which_to_install(tmp_path):
    result, venv = make(tmp_path, f"{tmp_path}/venv/bin/python")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "no Python 3.10-3.13 here (TensorFlow 2.21 has wheels for those only)" in result.stderr
    assert "make PYTHON=/path/to/python3.12" in result.stderr
    assert not venv.exists()


@pytest.mark.skipif(
    not (importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")),
    reason="builds the wheel with this venv's setuptools and wheel (no index needed), absent here",
)
def test_the_wheel_holds_the_package_and_not_the_bench(tmp_path):
    """What `pip install .` installs is distmnist/ alone: not the bench (bench/, a tool run from the checkout), and
    no module in it imports JAX or PyTorch (the bench's contenders)."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "logs", "build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    assert (source / "bench" / "__main__.py").exists()  # beside the package in the tree that is built
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").iterdir()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {name: archive.read(name) for name in names if name.endswith(".py")}
    assert {name.split("/")[0] for name in names} == {"distmnist", "-".join(wheel.name.split("-")[:2]) + ".dist-info"}
    assert "distmnist/train.py" in sources and not [name for name in names if "bench" in name]
    imported = set()
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert "tensorflow" in imported and not imported & {"jax", "torch", "bench"}

"""The set-up commands on a machine whose python3 TensorFlow has no wheels for (3.14, say): make finds a
supported interpreter, or says in one line which Python to install, before any pip runs."""

import os
import subprocess
import sys

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
    return subprocess.run(["/usr/bin/make", "--no-print-directory", "-n", f"VENV={venv}", *targets],
                          capture_output=True, text=True, cwd=REPO, env={"PATH": str(bin_dir)}, timeout=60), venv


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

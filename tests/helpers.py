"""Running the entry points as a user would: a subprocess with the test's Python."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, timeout_s: int = 300, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO, env=full_env)


def run_python(code: str, timeout_s: int = 120) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter outside the repository, so distmnist cannot be imported by accident."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                          cwd="/", env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

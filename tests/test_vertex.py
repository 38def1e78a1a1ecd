"""Vertex AI: a job's AIP_* folders become the run's (distmnist.vertex), and a job restarted after a stop resumes
from AIP_CHECKPOINT_DIR with its events in AIP_TENSORBOARD_LOG_DIR and its SavedModel in AIP_MODEL_DIR."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError
from distmnist.environment.vertex import from_environment

from helpers import REPO, read_scalars, run_module, run_python

AIP = {"AIP_CHECKPOINT_DIR": "gs://b/jobs/j1/checkpoints/", "AIP_MODEL_DIR": "gs://b/jobs/j1/model/",
       "AIP_TENSORBOARD_LOG_DIR": "gs://b/jobs/j1/logs/"}


def test_vertex_folders_become_the_runs(tmp_path):
    fuse = tmp_path / "gcs"
    fuse.mkdir()
    config = from_environment(TrainConfig(), AIP, fuse_root=str(fuse))
    assert config.logdir == f"{fuse}/b/jobs/j1/checkpoints" and config.run_name == "run"  # through the mount
    assert config.events_dir == "gs://b/jobs/j1/logs" and config.export_dir == "gs://b/jobs/j1/model"  # gs://
    assert from_environment(TrainConfig(), {}) == TrainConfig()  # elsewhere nothing changes
    given = TrainConfig(logdir="/mine", run_name="r", events_dir="/ev", export_dir="/ex")
    assert from_environment(given, AIP, fuse_root=str(fuse)) == given  # flags given win
    with pytest.raises(UserError, match=r"gs://b/jobs/j1/checkpoints/ is in Cloud Storage, but this machine has no "
                                        r"Cloud Storage FUSE mount at /nonexistent"):
        from_environment(TrainConfig(), AIP, fuse_root="/nonexistent")


@pytest.mark.slow
def test_a_restarted_job_resumes_and_writes_where_vertex_says(tmp_path, tiny_npz_dir):
    env = {"AIP_CHECKPOINT_DIR": str(tmp_path / "checkpoints") + "/", "AIP_MODEL_DIR": str(tmp_path / "model") + "/",
           "AIP_TENSORBOARD_LOG_DIR": str(tmp_path / "logs") + "/"}
    args = [sys.executable, "-m", "distmnist.train", f"--data_dir={tiny_npz_dir}", "--max_steps=200",
            "--batch_size=32", "--steps_per_loop=5", "--log_every=5", "--eval_every=100", "--checkpoint_every=20"]
    with open(tmp_path / "first.log", "w") as log:  # the job's first attempt, stopped as on preemption
        first = subprocess.Popen(args, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "step 60 loss" not in (tmp_path / "first.log").read_text():
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143, (tmp_path / "first.log").read_text()[-2000:]
    again = run_module("distmnist.train", *args[3:], env=env)  # the restart: the same command and environment
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stdout

    run_dir = tmp_path / "checkpoints" / "run"
    assert (run_dir / "run.json").exists() and (run_dir / "checkpoints").is_dir()
    assert not glob.glob(str(run_dir / "events.out.tfevents.*"))  # the events went to AIP_TENSORBOARD_LOG_DIR
    steps = [step for step, _ in read_scalars(str(tmp_path / "logs"))["loss"]]
    assert steps == list(range(0, 200, 5))  # each step once across the stop
    loaded = run_python(f"""
import numpy as np, tensorflow as tf
serve = tf.saved_model.load({str(tmp_path / 'model')!r}).signatures["serving_default"]
print(sorted(serve(images=tf.zeros([2, 28, 28], tf.uint8))))
""")
    assert loaded.returncode == 0 and loaded.stdout.strip() == "['classes', 'logits', 'outputs', 'probabilities']", \
        loaded.stderr[-2000:]


SCRIPT = os.path.join(REPO, "launch", "vertex.sh")
IMAGE = "us-central1-docker.pkg.dev/my-project/ml/distmnist:0.1.0"
ACCOUNT = "mnist-job@my-project.iam.gserviceaccount.com"
# gcloud's reference (https://cloud.google.com/sdk/gcloud/reference/ai/custom-jobs/...): each command's flags.
GCLOUD_FLAGS = {"create": {"--region", "--project", "--display-name", "--config"},
                "list": {"--region", "--project", "--filter", "--format"},
                "cancel": {"--region", "--project"}}


def vertex(*args, env=None):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=REPO, timeout=30,
                          env={**os.environ, **(env or {})})


def printed_spec(stdout: str) -> str:
    """The job spec a dry run prints: the lines between its heading and the gcloud command after it."""
    after = ("\n" + stdout).split("\n# the job spec (", 1)[1].split("\n", 1)[1]
    return after.split("\ngcloud ", 1)[0]


def printed_gcloud(stdout: str) -> list:
    """The printed gcloud commands as (verb, {flag: value}, positional arguments), each flag one gcloud documents."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("gcloud ai custom-jobs "):
            words = __import__("shlex").split(line)
            verb, flags, positional = words[3], {}, []
            for word in words[4:]:
                if word.startswith("--"):
                    flag, _, value = word.partition("=")
                    assert flag in GCLOUD_FLAGS[verb], f"gcloud ai custom-jobs {verb} has no flag {flag}"
                    flags[flag] = value
                else:
                    positional.append(word)
            found.append((verb, flags, positional))
    return found


def test_the_job_spec_is_a_valid_custom_job_spec():
    from google.cloud.aiplatform_v1.types import CustomJobSpec

    result = vertex("up", "--project=my-project", "--region=europe-west4", "--bucket=gs://my-bucket/jobs",
                    f"--image={IMAGE}", "--name=mnist-a", "--workers=3", "--machine-type=a2-highgpu-1g",
                    "--accelerator-type=NVIDIA_TESLA_A100", "--accelerator-count=1",
                    "--service-account=trainer@my-project.iam.gserviceaccount.com", "--dry-run", "--", "--epochs=3")
    assert result.returncode == 0 and not result.stderr, result.stderr
    # Google's own type: unknown fields fail.
    spec = CustomJobSpec.from_json(printed_spec(result.stdout), ignore_unknown_fields=False)
    chief, workers = spec.worker_pool_specs
    assert (chief.replica_count, workers.replica_count) == (1, 3)  # pool 0 the chief, pool 1 the workers
    for pool in (chief, workers):
        assert pool.container_spec.image_uri == IMAGE
        assert list(pool.container_spec.args) == ["--require_gpus", "--epochs=3"]  # no GPU: exit 2, no CPU run
        assert pool.machine_spec.machine_type == "a2-highgpu-1g" and pool.machine_spec.accelerator_count == 1
        assert pool.machine_spec.accelerator_type.name == "NVIDIA_TESLA_A100"
    assert spec.base_output_directory.output_uri_prefix == "gs://my-bucket/jobs/mnist-a"  # the AIP_* folders' root
    assert spec.scheduling.restart_job_on_worker_restart  # one restarts, all restart and resume together
    assert spec.service_account == "trainer@my-project.iam.gserviceaccount.com"
    (listed, list_flags, _), (verb, flags, positional) = printed_gcloud(result.stdout)
    # First the jobs that would make this one a second: of that name or folder, not ended.
    assert listed == "list" and list_flags["--filter"] == (
        "(displayName=mnist-a OR jobSpec.baseOutputDirectory.outputUriPrefix='gs://my-bucket/jobs/mnist-a') AND "
        "(state=JOB_STATE_QUEUED OR state=JOB_STATE_PENDING OR state=JOB_STATE_RUNNING OR state=JOB_STATE_CANCELLING)")
    assert verb == "create" and not positional
    assert flags["--region"] == "europe-west4" and flags["--project"] == "my-project"
    assert flags["--display-name"] == "mnist-a" and flags["--config"].endswith(".json")


def test_without_gpus_and_down():
    from google.cloud.aiplatform_v1.types import CustomJobSpec

    result = vertex("up", "--bucket=gs://my-bucket", f"--image={IMAGE}", "--workers=0", "--machine-type=n2-standard-8",
                    "--accelerator-type=NONE", f"--service-account={ACCOUNT}", "--dry-run")
    assert result.returncode == 0, result.stderr
    spec = CustomJobSpec.from_json(printed_spec(result.stdout), ignore_unknown_fields=False)
    pool, = spec.worker_pool_specs
    assert pool.machine_spec.accelerator_count == 0 and pool.replica_count == 1
    assert list(pool.container_spec.args) == []  # a CPU job: no --require_gpus, and no CMD to hide AIP_*
    down = vertex("down", "--name=mnist-a", "--dry-run")
    assert down.returncode == 0, down.stderr
    (verb, flags, _), (verb2, _, positional) = printed_gcloud(down.stdout)
    assert verb == "list" and flags["--filter"] == ("displayName=mnist-a AND (state=JOB_STATE_QUEUED OR "
                                                    "state=JOB_STATE_PENDING OR state=JOB_STATE_RUNNING)")
    assert verb2 == "cancel" and positional == ["JOB_ID"]


UP = ("up", "--bucket=gs://my-bucket", f"--image={IMAGE}")


@pytest.mark.slow  # a script started many times
@pytest.mark.parametrize("args, message", [
    (("up", f"--image={IMAGE}"), "--bucket must be a gs:// bucket"),
    (("up", "--bucket=gs://my-bucket/it's", f"--image={IMAGE}"),
     "--bucket must be a gs:// bucket (and folder: letters"),
    (("up", "--bucket=gs://my-bucket"), "--image must name the job image"),
    ((*UP, "--", "--logdir=/x"), "--logdir=/x is set by Vertex AI"),
    (("up", "--name=Bad_Name"), "--name must be lower-case letters"),
    (("up", "--accelerator-type=nvidia-l4"), "--accelerator-type must be a Vertex accelerator name"),
    # Without its own account a job runs as Vertex's service agent, which reads every bucket of the project.
    (UP, "--service-account must name the job's own service account (NAME@PROJECT.iam.gserviceaccount.com), "
         "holding roles/storage.objectAdmin on gs://my-bucket and nothing more, got ''"),
    ((*UP, "--tensorboard=projects/p/locations/us-central1/tensorboards/1"),
     "holding roles/storage.objectAdmin on gs://my-bucket and roles/aiplatform.user on the project (for "
     "--tensorboard) and nothing more"),
    ((*UP, "--service-account"), "--service-account needs a value (--service-account VALUE or --service-account="),
    ((*UP, "--dry-run=yes"), "--dry-run takes no value"),
    ((*UP, "--bogus", "1"), "unknown option '--bogus'"),
    (("start",), "unknown action 'start'"),
])
def test_bad_options_get_one_line(args, message, tmp_path):
    env, calls = fake_gcloud(tmp_path)
    result = vertex(*args, env=env)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("vertex.sh: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not calls.exists()  # gcloud never called: no job made


SAMPLES = {"--project": "other-project", "--region": "europe-west4", "--bucket": "gs://other-bucket",
           "--image": "europe-docker.pkg.dev/p/r/distmnist:0.2", "--name": "mnist-b", "--workers": "3",
           "--machine-type": "a2-highgpu-1g", "--accelerator-type": "NVIDIA_TESLA_A100", "--accelerator-count": "2",
           "--service-account": "other-job@my-project.iam.gserviceaccount.com",
           "--tensorboard": "projects/p/locations/us-central1/tensorboards/7"}


@pytest.mark.slow  # a script started many times
def test_every_option_takes_both_forms():
    listed = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert sorted(set(re.findall(r"^\s+(--[a-z][-a-z]*)[= ]", listed, re.M)) - {"--dry-run"}) == sorted(SAMPLES)
    base = (*UP, f"--service-account={ACCOUNT}", "--dry-run")

    def spec(*args):
        result = vertex(*base, *args)
        assert result.returncode == 0, result.stderr
        return re.sub(r"/tmp/vertex-job\.\w+\.json", "CONFIG", result.stdout)

    plain = spec()
    for option, value in SAMPLES.items():
        joined, spaced = spec(f"{option}={value}"), spec(option, value)
        assert joined == spaced and joined != plain, option


FAKE_GCLOUD = r"""#!/bin/bash
echo "gcloud $*" >> "$FAKE_LOG"
# The project's custom jobs in $FAKE_JOBS, one a line: ID DISPLAY_NAME OUTPUT_URI_PREFIX STATE. list prints those
# its --filter names (by display name or output folder, and state), the fields of --format=value(...) tab-separated;
# create adds one, queued.
filter="" format="" display="" config=""
for word in "$@"; do
  case $word in
    --filter=*) filter=${word#*=} ;; --format=*) format=${word#*=} ;;
    --display-name=*) display=${word#*=} ;; --config=*) config=${word#*=} ;;
  esac
done
case $3 in
  list)
    while read -r id name output state; do
      [[ $filter == *"state=$state"[\ \)]* ]] || continue
      [[ $filter == *"displayName=$name"[\ \)]* || $filter == *"outputUriPrefix='$output'"* ]] || continue
      declare -A value=([name]="projects/1/locations/us-central1/customJobs/$id" [displayName]=$name [state]=$state)
      fields=${format#value(}
      fields=${fields%)}
      line=""
      for field in ${fields//,/ }; do line+="${line:+$'\t'}${value[$field]}"; done
      echo "$line"
    done < "$FAKE_JOBS" ;;
  create)
    output=$(grep -o '"outputUriPrefix": "[^"]*"' "$config" | cut -d'"' -f4)
    echo "job$(wc -l < "$FAKE_JOBS") $display $output JOB_STATE_QUEUED" >> "$FAKE_JOBS" ;;
esac
exit 0
"""


def fake_gcloud(tmp_path, jobs=""):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "jobs").write_text(jobs)
    calls = tmp_path / "calls"
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(calls),
            "FAKE_JOBS": str(tmp_path / "jobs")}, calls


@pytest.mark.slow  # a script started many times
def test_down_cancels_queued_pending_and_running_jobs(tmp_path):
    jobs = "".join(f"{job} mnist-a gs://b/mnist-a JOB_STATE_{state}\n" for job, state in (
        ("q", "QUEUED"), ("p", "PENDING"), ("r", "RUNNING"), ("s", "SUCCEEDED"), ("c", "CANCELLED")))
    env, calls = fake_gcloud(tmp_path, jobs + "o mnist-b gs://b/mnist-b JOB_STATE_RUNNING\n")
    result = vertex("down", "--name=mnist-a", "--region", "us-central1", env=env)
    assert result.returncode == 0, result.stderr
    cancelled = [line.split()[4] for line in calls.read_text().splitlines() if " cancel " in line]
    assert cancelled == ["q", "p", "r"]  # a queued or pending job would start later and bill


@pytest.mark.slow  # a script started many times
def test_a_second_up_reports_the_job_instead_of_submitting_another(tmp_path):
    env, calls = fake_gcloud(tmp_path)
    up = (*UP, "--name=mnist-a", f"--service-account={ACCOUNT}")
    first, second = vertex(*up, env=env), vertex(*up, env=env)
    assert first.returncode == 0 and "already" not in first.stdout, first.stderr
    assert second.returncode == 0 and not second.stderr, second.stderr
    assert second.stdout == ("vertex.sh: job job0 (mnist-a, JOB_STATE_QUEUED) already trains into gs://my-bucket/"
                             "mnist-a: no second job submitted (vertex.sh down --name=mnist-a cancels it)\n")
    assert [line.split()[3] for line in calls.read_text().splitlines()] == ["list", "create", "list"]


@pytest.mark.slow  # a script started many times
@pytest.mark.parametrize("job, submitted", [
    ("x other gs://my-bucket/mnist-a JOB_STATE_RUNNING", False),  # another name, the same folder
    ("y mnist-a gs://elsewhere/mnist-a JOB_STATE_PENDING", False),  # the same name, another folder
    ("z mnist-a gs://my-bucket/mnist-a JOB_STATE_SUCCEEDED", True),  # ended: a new job resumes from its checkpoint
    ("v other gs://my-bucket/other JOB_STATE_RUNNING", True),
])
def test_up_finds_a_job_by_name_or_folder(tmp_path, job, submitted):
    env, calls = fake_gcloud(tmp_path, job + "\n")
    result = vertex(*UP, "--name=mnist-a", f"--service-account={ACCOUNT}", env=env)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert (" create " in calls.read_text()) == submitted
    assert ("no second job submitted" in result.stdout) == (not submitted)


@pytest.mark.slow  # a script started many times
def test_up_waits_for_a_job_being_cancelled(tmp_path):
    """Its replicas still run (the chief checkpoints on SIGTERM) into the folder a new job would resume from."""
    env, calls = fake_gcloud(tmp_path, "w mnist-a gs://my-bucket/mnist-a JOB_STATE_CANCELLING\n")
    result = vertex(*UP, "--name=mnist-a", f"--service-account={ACCOUNT}", env=env)
    assert result.returncode == 2 and not result.stdout and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr == ("vertex.sh: job w (mnist-a), writing to gs://my-bucket/mnist-a, is being cancelled: up "
                             "again once it has ended (gcloud ai custom-jobs describe w --region=us-central1)\n")
    assert " create " not in calls.read_text()

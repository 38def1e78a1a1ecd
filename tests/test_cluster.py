"""TF_CONFIG parsing: a good cluster is understood, a bad one is named in one clear error."""

import json
import re

import pytest

from distmnist.common.errors import UserError
from distmnist.training.cluster import NoRole, parse_tf_config, tf_config_from_jobset

from helpers import run_module


def tf_config(cluster, task):
    return json.dumps({"cluster": cluster, "task": task})


def test_unset_means_no_cluster():
    assert parse_tf_config(None) is None and parse_tf_config("  ") is None


def test_workers_and_the_chief():
    cluster = parse_tf_config(tf_config({"worker": ["a:1", "b:2", "c:3"]}, {"type": "worker", "index": 1}))
    assert cluster.num_workers == 3 and not cluster.is_chief
    assert cluster.name == "worker 1 (b:2)" and cluster.peers() == ["worker 0 (a:1)", "worker 2 (c:3)"]
    assert parse_tf_config(tf_config({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0})).is_chief
    with_chief = {"chief": ["c:1"], "worker": ["w:1"]}
    assert parse_tf_config(tf_config(with_chief, {"type": "chief", "index": 0})).is_chief
    assert not parse_tf_config(tf_config(with_chief, {"type": "worker", "index": 0})).is_chief


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {}}', 'TF_CONFIG needs {"cluster"'),
        (
            tf_config({"ps": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 0}),
            "cluster has parameter servers",
        ),
        (tf_config({"gpu_box": ["a:1"]}, {"type": "gpu_box", "index": 0}), "task type 'gpu_box'; distmnist runs only"),
        (tf_config({"chief": ["a:1"], "master": ["b:1"]}, {"type": "chief", "index": 0}), "names 'chief' twice"),
        (tf_config({"worker": []}, {"type": "worker", "index": 0}), "must be a non-empty list"),
        (tf_config({"worker": ["nohostport"]}, {"type": "worker", "index": 0}), "must be a non-empty list"),
        (tf_config({"worker": ["a:1", "a:1"]}, {"type": "worker", "index": 0}), "lists an address twice"),
        (tf_config({"chief": ["a:1", "b:1"]}, {"type": "chief", "index": 0}), "at most one chief"),
        (tf_config({"worker": ["a:1"]}, {"type": "chief", "index": 0}), "task type 'chief' is not in the cluster"),
        (tf_config({"worker": ["a:1"]}, {"type": "worker", "index": 1}), "task index 1 is out of range"),
        (tf_config({"worker": ["a:1"]}, {"type": "worker", "index": "0"}), "task index '0' is out of range"),
    ],
)
def test_bad_tf_config_is_named(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{")):
        parse_tf_config(text)


# TF_CONFIG as each engine writes it (addresses shortened): the cluster distmnist trains in and who the chief is.
KUBEFLOW = {
    "cluster": {
        "chief": ["mnist-chief-0.ns.svc:2222"],
        "worker": ["mnist-worker-0.ns.svc:2222", "mnist-worker-1.ns.svc:2222"],
    },
    "task": {"type": "worker", "index": 1},
    "environment": "cloud",
}
VERTEX = {
    "cluster": {
        "chief": ["cmle-training-workerpool0-ab12-0:2222"],
        "worker": ["cmle-training-workerpool1-ab12-0:2222"],
    },
    "environment": "cloud",
    "task": {"type": "chief", "index": 0, "trial": "1"},
    "job": {"worker_pool_specs": [{"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": "1"}]},
}
SAGEMAKER = {
    "cluster": {"worker": ["algo-1:2222", "algo-2:2222"]},
    "environment": "cloud",
    "task": {"index": 0, "type": "worker"},
}
LEGACY_MASTER = {
    "cluster": {"master": ["m:2222"], "worker": ["w:2222"]},
    "task": {"type": "master", "index": 0},
    "environment": "cloud",
    "task_env": "ignored",
}


@pytest.mark.parametrize(
    "config, spec, task, chief",
    [
        (
            KUBEFLOW,
            {"chief": KUBEFLOW["cluster"]["chief"], "worker": KUBEFLOW["cluster"]["worker"]},
            ("worker", 1),
            False,
        ),
        (VERTEX, VERTEX["cluster"], ("chief", 0), True),
        (SAGEMAKER, SAGEMAKER["cluster"], ("worker", 0), True),
        (LEGACY_MASTER, {"chief": ["m:2222"], "worker": ["w:2222"]}, ("chief", 0), True),
        (
            {**KUBEFLOW, "cluster": {**KUBEFLOW["cluster"], "evaluator": ["ev:2222"]}},  # not part of training
            {"chief": KUBEFLOW["cluster"]["chief"], "worker": KUBEFLOW["cluster"]["worker"]},
            ("worker", 1),
            False,
        ),
    ],
)
def test_each_engines_tf_config(config, spec, task, chief):
    cluster = parse_tf_config(json.dumps(config))
    assert cluster.spec == spec and (cluster.task_type, cluster.task_index) == task and cluster.is_chief == chief
    assert cluster.num_workers == sum(len(a) for a in spec.values())


@pytest.mark.parametrize("kind", ["ps", "evaluator", "PS"])
def test_a_task_with_no_role_is_told_so(kind):
    config = {"cluster": {"chief": ["c:1"], "worker": ["w:1"]}, "task": {"type": kind, "index": 0}}
    with pytest.raises(NoRole, match=rf"gives this process the task type '{kind}'; .* leave parameter servers"):
        parse_tf_config(json.dumps(config))


@pytest.mark.slow
def test_an_evaluator_exits_at_once_with_one_line_and_status_2(tmp_path):
    """Before TensorFlow is imported: no peer waits on it, and 2 is a status engines do not restart (Kubeflow's
    ExitCode policy retries 128 and above only)."""
    config = {
        "cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
        "task": {"type": "evaluator", "index": 0},
    }
    result = run_module(
        "distmnist.train",
        f"--logdir={tmp_path}",
        env={"TF_CONFIG": json.dumps(config)},
        unset=("TF_CPP_MIN_LOG_LEVEL",),
        timeout_s=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "distmnist.train: error: TF_CONFIG gives this process the task type 'evaluator'; distmnist trains with "
        "MultiWorkerMirroredStrategy (a chief and workers), which has none: leave parameter servers and evaluators "
        "out of the job"
    ]
    assert not list(tmp_path.iterdir())


JOBSET = {
    "DISTMNIST_JOBSET_NAME": "mnist",
    "DISTMNIST_JOBSET_ROLE": "worker",
    "JOB_COMPLETION_INDEX": "1",
    "DISTMNIST_JOBSET_WORKERS": "2",
}


def test_a_trainjob_pod_builds_its_tf_config_from_jobsets_names():
    """JobSet names a pod JOBSET-ROLE-JOBINDEX-PODINDEX in the subdomain JOBSET (kubernetes-sigs/jobset,
    `Network.EnableDNSHostnames`): every pod knows every address from its own environment."""
    cluster = parse_tf_config(tf_config_from_jobset(JOBSET))
    assert cluster.spec == {
        "chief": ["mnist-chief-0-0.mnist:2222"],
        "worker": ["mnist-worker-0-0.mnist:2222", "mnist-worker-0-1.mnist:2222"],
    }
    assert (cluster.task_type, cluster.task_index, cluster.is_chief) == ("worker", 1, False)
    chief = parse_tf_config(
        tf_config_from_jobset(
            {
                **JOBSET,
                "DISTMNIST_JOBSET_ROLE": "chief",
                "JOB_COMPLETION_INDEX": "0",
                "DISTMNIST_JOBSET_WORKERS": "0",
                "DISTMNIST_JOBSET_PORT": "2345",
            }
        )
    )
    assert chief.spec == {"chief": ["mnist-chief-0-0.mnist:2345"]} and chief.is_chief
    assert tf_config_from_jobset({}) is None  # not a Trainer pod: nothing to build


BAD_JOBSETS = [
    ({"DISTMNIST_JOBSET_ROLE": "ps"}, "DISTMNIST_JOBSET_ROLE must be chief or worker"),
    ({"JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX 2 is out of range for 2 worker pod(s)"),
    ({"JOB_COMPLETION_INDEX": ""}, "JOB_COMPLETION_INDEX must be a whole number"),
    ({"DISTMNIST_JOBSET_WORKERS": "-1"}, "DISTMNIST_JOBSET_WORKERS must be a whole number"),
    ({"DISTMNIST_JOBSET_NAME": "Mnist_A"}, "must be DNS labels"),
]


def test_a_bad_jobset_environment_is_named():
    for change, message in BAD_JOBSETS:
        with pytest.raises(UserError, match=re.escape(message)):
            tf_config_from_jobset({**JOBSET, **change})


@pytest.mark.slow
def test_a_bad_jobset_environment_stops_train_in_one_line(tmp_path):
    result = run_module(
        "distmnist.train",
        f"--logdir={tmp_path}",
        env={**JOBSET, "DISTMNIST_JOBSET_ROLE": "x"},
        unset=("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG"),
        timeout_s=30,
    )
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "distmnist.train: error: DISTMNIST_JOBSET_ROLE must be chief or worker (the JobSet's replicated job), got 'x'"
    ]
    assert not list(tmp_path.iterdir())

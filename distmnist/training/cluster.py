"""TF_CONFIG: reading and checking the cluster a multi-worker job runs in, as every engine writes it. No
TensorFlow here.

  - launch/local_cluster.sh and the VM scripts: {"cluster": {"worker": [...]}, "task": {"type": "worker", ...}}
  - Kubeflow's TFJob: lower-case task types, a "chief" beside the "worker"s, and an "environment" key;
  - Vertex AI and AI Platform: "chief" and "worker", "environment", "job" (the job's spec) and, in a task,
    "trial"/"cloud" keys; older jobs call the chief "master" (treated as "chief");
  - SageMaker's TensorFlow containers with MultiWorkerMirroredStrategy: "worker"s only, worker 0 the chief;
  - Kubeflow Trainer v2 writes none: launch/k8s.sh's TrainingRuntime gives each pod its JobSet's name, its
    role and the number of workers (DISTMNIST_JOBSET_*), Kubernetes its JOB_COMPLETION_INDEX, and
    `tf_config_from_jobset` builds TF_CONFIG from them and JobSet's stable host names.
Keys beyond "cluster" and "task" are ignored. MultiWorkerMirroredStrategy has no use for parameter servers or
an evaluator: such a task exits at once (NoRole, exit status 2, which engines do not restart), and a cluster
with parameter servers is refused by every task, so no one waits for peers that will never join.
"""

import dataclasses
import json
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from distmnist.common.errors import UserError

TASK_TYPES = ("chief", "worker")
ALIASES = {"master": "chief"}  # AI Platform's and older Estimator jobs' name for the chief
NO_ROLE = ("ps", "evaluator")


FORM = 'TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'


class NoRole(UserError):
    """TF_CONFIG gives this process a task that distmnist has no role for (a parameter server, an evaluator)."""


def _task_type(name: Any) -> Any:
    """A task type as distmnist names it: lower case, "master" read as "chief"; a JSON value other than a string
    comes back as it is."""
    return ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The cluster (task type -> addresses) and this process's place in it."""

    spec: dict
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(addresses) for addresses in self.spec.values())

    @property
    def is_chief(self) -> bool:
        """The chief writes the run directory: the `chief` task, or worker 0 when there is none."""
        if "chief" in self.spec:
            return self.task_type == "chief"
        return self.task_index == 0

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index} ({self.spec[self.task_type][self.task_index]})"

    def peers(self) -> list:
        return [
            f"{kind} {i} ({address})"
            for kind, addresses in self.spec.items()
            for i, address in enumerate(addresses)
            if (kind, i) != (self.task_type, self.task_index)
        ]


def parse_tf_config(text: str | None) -> Cluster | None:
    """Returns the Cluster that TF_CONFIG describes, None when it is unset or empty; UserError when it is bad."""
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc}); see launch/local_cluster.sh for its form") from None
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("cluster"), dict)
        or not isinstance(config.get("task"), dict)
    ):
        raise UserError(FORM)
    task = config["task"]
    kind = _task_type(task.get("type"))
    if kind in NO_ROLE:
        raise NoRole(
            f"TF_CONFIG gives this process the task type {task.get('type')!r}; distmnist trains with "
            "MultiWorkerMirroredStrategy (a chief and workers), which has none: leave parameter servers and "
            "evaluators out of the job"
        )
    spec = {}
    for name, addresses in config["cluster"].items():
        normal = _task_type(name)
        if normal == "evaluator":
            continue  # not part of the training collective; that task itself exits above
        if normal == "ps":
            raise UserError(
                "TF_CONFIG's cluster has parameter servers ('ps'); distmnist trains with "
                "MultiWorkerMirroredStrategy, which uses none: submit the job with a chief and workers "
                "only"
            )
        if normal in spec:
            raise UserError(f"TF_CONFIG cluster names {normal!r} twice (as {name!r})")
        spec[normal] = addresses
    if not spec:
        raise UserError(FORM)
    for kind_in_spec, addresses in spec.items():
        if kind_in_spec not in TASK_TYPES:
            raise UserError(
                f"TF_CONFIG cluster has task type {kind_in_spec!r}; distmnist runs only {' and '.join(TASK_TYPES)}"
            )
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)
        ):
            raise UserError(f'TF_CONFIG cluster {kind_in_spec!r} must be a non-empty list of "host:port" strings')
    if len(spec.get("chief", [])) > 1:
        raise UserError("TF_CONFIG cluster may have at most one chief")
    everyone = [a for addresses in spec.values() for a in addresses]
    if len(set(everyone)) != len(everyone):
        raise UserError("TF_CONFIG cluster lists an address twice")
    index = task.get("index")
    if kind not in spec:
        raise UserError(f"TF_CONFIG task type {kind!r} is not in the cluster ({', '.join(spec)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(spec[kind]):
        raise UserError(f"TF_CONFIG task index {index!r} is out of range for {len(spec[kind])} {kind} task(s)")
    return Cluster(spec=spec, task_type=kind, task_index=index)


JOBSET_PORT = 2222
_JOBSET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def tf_config_from_jobset(environ: Mapping[str, str]) -> str | None:
    """TF_CONFIG for a pod of the JobSet that launch/k8s.sh's TrainingRuntime makes (Kubeflow Trainer v2), None
    where DISTMNIST_JOBSET_NAME is unset. JobSet names each pod JOBSET-ROLE-0-INDEX in the subdomain JOBSET (a
    headless service), so every pod knows every address: the chief JOBSET-chief-0-0, the workers
    JOBSET-worker-0-0 ... JOBSET-worker-0-(N-1), each on port 2222 (DISTMNIST_JOBSET_PORT)."""
    name = environ.get("DISTMNIST_JOBSET_NAME", "")
    if not name:
        return None
    role = environ.get("DISTMNIST_JOBSET_ROLE", "")
    subdomain = environ.get("DISTMNIST_JOBSET_SUBDOMAIN") or name
    fields = {
        "JOB_COMPLETION_INDEX": environ.get("JOB_COMPLETION_INDEX", ""),
        "DISTMNIST_JOBSET_WORKERS": environ.get("DISTMNIST_JOBSET_WORKERS", ""),
        "DISTMNIST_JOBSET_PORT": environ.get("DISTMNIST_JOBSET_PORT", str(JOBSET_PORT)),
    }
    for key, value in fields.items():
        if not value.isdigit():
            raise UserError(
                f"{key} must be a whole number in a Kubeflow Trainer pod (launch/k8s.sh sets it), got {value!r}"
            )
    index, workers, port = (int(value) for value in fields.values())
    if not _JOBSET_NAME.fullmatch(name) or not _JOBSET_NAME.fullmatch(subdomain):
        raise UserError(f"DISTMNIST_JOBSET_NAME {name!r} (and its subdomain {subdomain!r}) must be DNS labels")
    if role not in TASK_TYPES:
        raise UserError(f"DISTMNIST_JOBSET_ROLE must be chief or worker (the JobSet's replicated job), got {role!r}")
    members = {"chief": 1, "worker": workers}
    if not 0 <= index < members[role]:
        raise UserError(f"JOB_COMPLETION_INDEX {index} is out of range for {members[role]} {role} pod(s)")
    cluster = {
        kind: [f"{name}-{kind}-0-{i}.{subdomain}:{port}" for i in range(count)]
        for kind, count in members.items()
        if count
    }
    return json.dumps({"cluster": cluster, "task": {"type": role, "index": index}})


def from_environment(strategy: str, environ: MutableMapping[str, str]) -> Cluster | None:
    """The run's cluster, read from the environment once (the entry point does, and passes the answer on): TF_CONFIG,
    which a Kubeflow Trainer v2 pod's JobSet names make when it is unset (then set in environ, where TensorFlow's
    collectives read it too); None alone, or with a strategy other than auto and multi_worker. UserError for a bad
    TF_CONFIG, or a task with no role here."""
    if not environ.get("TF_CONFIG"):
        jobset = tf_config_from_jobset(environ)
        if jobset:
            environ["TF_CONFIG"] = jobset
    if strategy not in ("auto", "multi_worker"):
        return None
    return parse_tf_config(environ.get("TF_CONFIG"))

"""TF_CONFIG: reading and checking the cluster a multi-worker job runs in. No TensorFlow here."""

import dataclasses
import json
from typing import Optional

from distmnist.errors import UserError

TASK_TYPES = ("chief", "worker")


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
        return [f"{kind} {i} ({address})" for kind, addresses in self.spec.items()
                for i, address in enumerate(addresses) if (kind, i) != (self.task_type, self.task_index)]


def parse_tf_config(text: Optional[str]) -> Optional[Cluster]:
    """Returns the Cluster that TF_CONFIG describes, None when it is unset or empty; UserError when it is bad."""
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc}); see launch/local_cluster.sh for its form") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or \
            not isinstance(config.get("task"), dict):
        raise UserError('TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                        '"index": N}}')
    spec = config["cluster"]
    for kind, addresses in spec.items():
        if kind not in TASK_TYPES:
            raise UserError(f"TF_CONFIG cluster has task type {kind!r}; distmnist runs only {' and '.join(TASK_TYPES)}")
        if not isinstance(addresses, list) or not addresses or \
                not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise UserError(f"TF_CONFIG cluster {kind!r} must be a non-empty list of \"host:port\" strings")
    if len(spec.get("chief", [])) > 1:
        raise UserError("TF_CONFIG cluster may have at most one chief")
    everyone = [a for addresses in spec.values() for a in addresses]
    if len(set(everyone)) != len(everyone):
        raise UserError("TF_CONFIG cluster lists an address twice")
    task = config["task"]
    kind, index = task.get("type"), task.get("index")
    if kind not in spec:
        raise UserError(f"TF_CONFIG task type {kind!r} is not in the cluster ({', '.join(spec)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(spec[kind]):
        raise UserError(f"TF_CONFIG task index {index!r} is out of range for {len(spec[kind])} {kind} task(s)")
    return Cluster(spec=spec, task_type=kind, task_index=index)

"""TF_CONFIG parsing: a good cluster is understood, a bad one is named in one clear error."""

import json

import pytest

from distmnist.cluster import parse_tf_config
from distmnist.errors import UserError


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


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {}}', 'TF_CONFIG needs {"cluster"'),
    (tf_config({"ps": ["a:1"]}, {"type": "ps", "index": 0}), "task type 'ps'; distmnist runs only chief and worker"),
    (tf_config({"worker": []}, {"type": "worker", "index": 0}), "must be a non-empty list"),
    (tf_config({"worker": ["nohostport"]}, {"type": "worker", "index": 0}), "must be a non-empty list"),
    (tf_config({"worker": ["a:1", "a:1"]}, {"type": "worker", "index": 0}), "lists an address twice"),
    (tf_config({"chief": ["a:1", "b:1"]}, {"type": "chief", "index": 0}), "at most one chief"),
    (tf_config({"worker": ["a:1"]}, {"type": "chief", "index": 0}), "task type 'chief' is not in the cluster"),
    (tf_config({"worker": ["a:1"]}, {"type": "worker", "index": 1}), "task index 1 is out of range"),
    (tf_config({"worker": ["a:1"]}, {"type": "worker", "index": "0"}), "task index '0' is out of range"),
])
def test_bad_tf_config_is_named(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{")):
        parse_tf_config(text)

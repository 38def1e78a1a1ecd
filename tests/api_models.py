"""Manifests checked against the engines' own Python models: every field known, every required field present.

Kubernetes objects and Kubeflow's TFJob against the generated OpenAPI models of `kubernetes` and
`kubeflow-training` (the Kubeflow SDK's `KubeflowOrgV1TFJob` and the `V1...` types it refers to)."""

import re

from kubeflow.training import models as kubeflow_models
from kubernetes import client as kubernetes_models

PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str,
              "date": str}


def _model(name: str):
    return getattr(kubeflow_models, name, None) or getattr(kubernetes_models, name)


def check(value, type_name: str, path: str = "") -> None:
    """Raises AssertionError at the first field the model does not know, a value of the wrong kind, or a
    required field that is missing (the models' own client-side validation)."""
    listed = re.fullmatch(r"list\[(.+)\]", type_name)
    mapped = re.fullmatch(r"dict\(([^,]+), (.+)\)", type_name)
    if listed:
        assert isinstance(value, list), f"{path}: expected a list for {type_name}, got {value!r}"
        for i, item in enumerate(value):
            check(item, listed.group(1), f"{path}[{i}]")
    elif mapped:
        assert isinstance(value, dict), f"{path}: expected a mapping for {type_name}, got {value!r}"
        for key, item in value.items():
            check(item, mapped.group(2), f"{path}.{key}")
    elif type_name in PRIMITIVES:
        kind = PRIMITIVES[type_name]
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), \
            f"{path}: expected {type_name}, got {value!r}"
    else:
        model = _model(type_name)
        assert isinstance(value, dict), f"{path}: expected a {type_name} object, got {value!r}"
        attributes = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
        unknown = sorted(set(value) - set(attributes))
        assert not unknown, f"{path}: {type_name} has no field {', '.join(unknown)}"
        for key, item in value.items():
            check(item, model.openapi_types[attributes[key]], f"{path}.{key}")
        try:  # the generated setters refuse None for a required field (and values outside an enum)
            model(**{attributes[key]: item for key, item in value.items()})
        except ValueError as exc:
            raise AssertionError(f"{path}: {type_name}: {exc}") from None


def check_manifest(document: dict) -> None:
    """One Kubernetes manifest (apiVersion and kind pick the model)."""
    models = {("kubeflow.org/v1", "TFJob"): "KubeflowOrgV1TFJob",
              ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim"}
    key = (document.get("apiVersion"), document.get("kind"))
    assert key in models, f"no model for {key}"
    check(document, models[key], document["kind"])

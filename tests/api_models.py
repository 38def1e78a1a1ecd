"""Manifests checked against the engines' own Python models: every field known, every required field present.

Kubernetes objects and Kubeflow's TFJob against the generated OpenAPI models of `kubernetes` and
`kubeflow-training` (the Kubeflow SDK's `KubeflowOrgV1TFJob` and the `V1...` types it refers to); Kubeflow
Trainer v2's TrainJob and TrainingRuntime (and the JobSet and Kubernetes types inside them) against the pydantic
models of `kubeflow-trainer-api`, which Trainer's own SDK uses."""

import re
import typing

import pydantic
from kubeflow.training import models as kubeflow_models
from kubeflow_trainer_api import models as trainer_models
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


def _model_of(annotation):
    """The pydantic model inside Optional[...] / List[...] / Dict[str, ...], with how it is nested."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return _model_of(next(a for a in args if a is not type(None)))
    if origin is list:
        return ("list", _model_of(args[0]))
    if origin is dict:
        return ("dict", _model_of(args[1]))
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return ("model", annotation)
    return ("value", None)


QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?")


def check_pydantic(value, model, path: str = "") -> None:
    """Raises AssertionError at the first field the pydantic model does not know (the models themselves ignore
    unknown fields, so each level is compared with the model's aliases), then validates the whole value (types,
    required fields). A resource quantity ("1", "5Gi"), a string in Kubernetes' JSON but a field-less model in the
    generated code, is checked against Kubernetes' quantity grammar here and handed to the model as {}."""

    def walk(item, shape, where):
        kind, inner = shape
        if kind == "list" and isinstance(item, list):
            return [walk(element, inner, f"{where}[{i}]") for i, element in enumerate(item)]
        if kind == "dict" and isinstance(item, dict):
            return {key: walk(element, inner, f"{where}.{key}") for key, element in item.items()}
        if kind == "model" and inner is trainer_models.IoK8sApimachineryPkgApiResourceQuantity:
            assert isinstance(item, (str, int)) and QUANTITY.fullmatch(str(item)), \
                f"{where}: {item!r} is not a Kubernetes quantity"
            return {}
        if kind == "model" and isinstance(item, dict):
            fields = {(f.alias or name): f for name, f in inner.model_fields.items()}
            unknown = sorted(set(item) - set(fields))
            assert not unknown, f"{where}: {inner.__name__} has no field {', '.join(unknown)}"
            return {key: walk(element, _model_of(fields[key].annotation), f"{where}.{key}")
                    for key, element in item.items()}
        return item

    try:
        model.model_validate(walk(value, ("model", model), path))
    except pydantic.ValidationError as exc:
        raise AssertionError(f"{path}: {model.__name__}: {exc}") from None


def check_manifest(document: dict) -> None:
    """One Kubernetes manifest (apiVersion and kind pick the model)."""
    models = {("kubeflow.org/v1", "TFJob"): "KubeflowOrgV1TFJob",
              ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
              ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy"}
    trainer = {("trainer.kubeflow.org/v1alpha1", "TrainJob"): trainer_models.TrainerV1alpha1TrainJob,
               ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): trainer_models.TrainerV1alpha1TrainingRuntime}
    key = (document.get("apiVersion"), document.get("kind"))
    assert key in models or key in trainer, f"no model for {key}"
    if key in trainer:
        check_pydantic(document, trainer[key], document["kind"])
    else:
        check(document, models[key], document["kind"])

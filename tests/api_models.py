"""Manifests checked against the engines' own Python models: every field known, every required field present.

Kubernetes objects and Kubeflow's TFJob against the generated OpenAPI models of `kubernetes` and
`kubeflow-training` (the Kubeflow SDK's `KubeflowOrgV1TFJob` and the `V1...` types it refers to); Kubeflow
Trainer v2's TrainJob and TrainingRuntime (and the JobSet and Kubernetes types inside them) against the pydantic
models of `kubeflow-trainer-api`, which Trainer's own SDK uses: the installed one here, and each supported
release's own in a process of its own (check_for_release)."""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import typing
import zipfile

import pydantic
from kubeflow_trainer_api import models as trainer_models

PRIMITIVES = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "object": object,
    "datetime": str,
    "date": str,
}


def _model(name: str):
    # Imported here: a check of Trainer's kinds, in a release's own process (check_for_release), needs neither.
    from kubeflow.training import models as kubeflow_models
    from kubernetes import client as kubernetes_models

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
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (
            f"{path}: expected {type_name}, got {value!r}"
        )
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


# What a CRD keeps of an ObjectMeta below its root (controller-gen's schema for embedded metadata): a pod
# template's `generateName`, say, is an unknown field there, though the full ObjectMeta model has it.
EMBEDDED_METADATA = {"annotations", "finalizers", "labels", "name", "namespace"}
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
            assert isinstance(item, (str, int)) and QUANTITY.fullmatch(str(item)), (
                f"{where}: {item!r} is not a Kubernetes quantity"
            )
            return {}
        if kind == "model" and isinstance(item, dict):
            fields = {(f.alias or name): f for name, f in inner.model_fields.items()}
            if inner is trainer_models.IoK8sApimachineryPkgApisMetaV1ObjectMeta and where != f"{path}.metadata":
                fields = {key: f for key, f in fields.items() if key in EMBEDDED_METADATA}
            unknown = sorted(set(item) - set(fields))
            assert not unknown, f"{where}: {inner.__name__} has no field {', '.join(unknown)}"
            return {
                key: walk(element, _model_of(fields[key].annotation), f"{where}.{key}") for key, element in item.items()
            }
        return item

    try:
        model.model_validate(walk(value, ("model", model), path))
    except pydantic.ValidationError as exc:
        raise AssertionError(f"{path}: {model.__name__}: {exc}") from None


def check_manifest(document: dict) -> None:
    """One Kubernetes manifest (apiVersion and kind pick the model)."""
    models = {
        ("kubeflow.org/v1", "TFJob"): "KubeflowOrgV1TFJob",
        ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
        ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    }
    trainer = {
        ("trainer.kubeflow.org/v1alpha1", "TrainJob"): trainer_models.TrainerV1alpha1TrainJob,
        ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): trainer_models.TrainerV1alpha1TrainingRuntime,
    }
    key = (document.get("apiVersion"), document.get("kind"))
    assert key in models or key in trainer, f"no model for {key}"
    if key in trainer:
        check_pydantic(document, trainer[key], document["kind"])
    else:
        check(document, models[key], document["kind"])


# Kubeflow Trainer's supported releases, each as the pydantic models of its own `kubeflow-trainer-api` wheel on
# PyPI (the latest patch of each minor release, pinned by its hash). The wheel's models are generated from the
# same Go types as the release's CRDs (manifests/base/crds in its tag), and agree with them on every field name,
# required field and value kind of the TrainJob and TrainingRuntime, but for ObjectMeta below the root, which the
# CRDs cut down to EMBEDDED_METADATA (docs/cloud.md, "Kubernetes"). Neither checks the CRDs' CEL rules or numeric
# bounds.
TRAINER_RELEASES = {
    "2.0": ("2.0.1", "029fe0363ea246afd519b932f596f40350542f211505063d50c66fdff67a56ec"),
    "2.1": ("2.1.0", "1afc28bf395cf349a8c10fb94f4b4301afb22c1ba7e14a0efd1dbcf82bc73661"),
    "2.2": ("2.2.1", "7d73a4b4dac4cf931a82e6fe47b999599efe6e482ba144e49bddbf6f82f1c6af"),
    "2.3": ("2.3.0", "0a08637b113ff220b04d819ce76e82b0ddcb2ef0dc87f33f3fbf5f366c74aeee"),
}


def trainer_release_models(release: str) -> str:
    """A folder that holds the release's kubeflow_trainer_api package: its wheel, fetched once with pip (the hash
    required) into the user's cache and unpacked there."""
    version, sha256 = TRAINER_RELEASES[release]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distmnist-tests")
    folder = os.path.join(cache, f"kubeflow-trainer-api-{version}-{sha256[:12]}")
    if os.path.isdir(folder):
        return folder
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        requirement = os.path.join(scratch, "requirements.txt")
        with open(requirement, "w") as out:
            out.write(f"kubeflow-trainer-api=={version} --hash=sha256:{sha256}\n")
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
                requirement,
                "-d",
                os.path.join(scratch, "wheel"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert download.returncode == 0, f"pip download kubeflow-trainer-api=={version}: {download.stderr[-2000:]}"
        (wheel,) = os.listdir(os.path.join(scratch, "wheel"))
        with open(os.path.join(scratch, "wheel", wheel), "rb") as data:
            assert hashlib.sha256(data.read()).hexdigest() == sha256, wheel
        zipfile.ZipFile(os.path.join(scratch, "wheel", wheel)).extractall(os.path.join(scratch, "site"))
        try:  # another test process may have put it there meanwhile: either copy is the same wheel
            os.rename(os.path.join(scratch, "site"), folder)
        except OSError:
            assert os.path.isdir(folder), folder
    return folder


_IN_RELEASE = """
import json, sys
import kubeflow_trainer_api.models as models
assert models.__file__.startswith(sys.argv[1]), models.__file__
from api_models import check_manifest

def errors(document):
    try:
        check_manifest(document)
    except AssertionError as exc:
        return str(exc)

def fields(model):
    return sorted(f.alias or name for name, f in model.model_fields.items())

print(json.dumps({"errors": [errors(document) for document in json.load(sys.stdin)],
                  "fields": {"trainjobs.spec": fields(models.TrainerV1alpha1TrainJobSpec),
                             "trainingruntimes.spec": fields(models.TrainerV1alpha1TrainingRuntimeSpec)}}))
"""


def _in_release(release: str, documents: list) -> dict:
    models = trainer_release_models(release)
    path = os.pathsep.join([models, os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _IN_RELEASE, models],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def check_for_release(release: str, documents: list) -> list:
    """check_manifest on each document against the release's own Trainer models: each one's error, or None."""
    return _in_release(release, documents)["errors"]


def trainer_spec_fields(release: str) -> dict:
    """The fields of a TrainJob's and a TrainingRuntime's spec in the release, by their kubectl explain paths."""
    return _in_release(release, [])["fields"]

"""launch/k8s.sh: the TFJob and claim it renders, checked against Kubeflow's and Kubernetes' own models; apply and
delete through kubectl (a fake one here: no cluster is reachable)."""

import os
import stat
import subprocess

import pytest
import yaml

from api_models import check_manifest
from helpers import REPO

SCRIPT = os.path.join(REPO, "launch", "k8s.sh")


def k8s(*args, env=None):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=30)


def render(*args) -> dict:
    result = k8s("render", *args)
    assert result.returncode == 0 and not result.stderr, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    for document in documents:
        check_manifest(document)
    return {d["kind"]: d for d in documents}


def test_the_rendered_job_is_a_valid_tfjob_with_a_chief_workers_and_a_claim():
    manifests = render("--image=registry.example/distmnist:0.1.0", "--namespace=ml", "--name=mnist-a",
                       "--workers=3", "--gpus=2", "--pvc=runs", "--pvc-size=20Gi", "--storage-class=fast",
                       "--", "--epochs=3", "--batch_size=256")
    assert set(manifests) == {"PersistentVolumeClaim", "TFJob"}  # no Service, no Ingress: the operator's own only
    claim, job = manifests["PersistentVolumeClaim"], manifests["TFJob"]
    assert claim["metadata"] == {"name": "runs", "namespace": "ml"}
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi" and claim["spec"]["storageClassName"] == "fast"
    assert job["metadata"] == {"name": "mnist-a", "namespace": "ml"}
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running" and job["spec"]["runPolicy"]["backoffLimit"] > 0
    replicas = job["spec"]["tfReplicaSpecs"]
    assert {kind: r["replicas"] for kind, r in replicas.items()} == {"Chief": 1, "Worker": 3}
    for kind, replica in replicas.items():
        assert replica["restartPolicy"] == "ExitCode"  # 1-127 permanent, 128+ retried: distmnist's statuses
        pod = replica["template"]["spec"]
        container, = pod["containers"]
        assert container["name"] == "tensorflow"  # the operator's default container: it gets TF_CONFIG
        assert container["image"] == "registry.example/distmnist:0.1.0"
        assert container["args"] == ["--logdir=/runs", "--run_name=mnist-a", "--epochs=3", "--batch_size=256"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
        assert "ports" not in container and "command" not in container  # the image's entry point
        assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounted = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert mounted == (["/runs"] if kind == "Chief" else [])  # the chief alone writes the run directory
    assert replicas["Chief"]["template"]["spec"]["volumes"] == [
        {"name": "runs", "persistentVolumeClaim": {"claimName": "runs"}}]


def test_defaults_and_no_gpus():
    manifests = render("--gpus=0", "--workers=0")
    job = manifests["TFJob"]
    assert set(job["spec"]["tfReplicaSpecs"]) == {"Chief"}
    assert "resources" not in job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    assert "storageClassName" not in manifests["PersistentVolumeClaim"]["spec"]


def test_the_model_check_can_fail():
    job = render()["TFJob"]
    job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match=r"V1Container has no field imagePullPolicyy"):
        check_manifest(job)
    del job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["imagePullPolicyy"]
    del job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(AssertionError, match=r"V1Container: Invalid value for `name`, must not be `None`"):
        check_manifest(job)


@pytest.mark.parametrize("args, message", [
    (("render", "--name=Big_Name"), "--name must be a lower-case DNS label"),
    (("render", "--workers=-1"), "--workers must be a whole number"),
    (("render", "--gpus=two"), "--gpus must be a whole number"),
    (("render", "--pvc-size=5GB"), "--pvc-size must read like 5Gi"),
    (("render", "--", "--logdir=/elsewhere"), "--logdir=/elsewhere is set by k8s.sh"),
    (("render", "--", "epochs=3"), "train flags go after -- as --flag=value"),
    (("render", "--bogus"), "unknown option '--bogus'"),
    (("launch",), "unknown action 'launch'"),
])
def test_bad_options_get_one_line(args, message):
    result = k8s(*args)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("k8s.sh: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_apply_and_delete_go_through_kubectl(tmp_path):
    fake = tmp_path / "kubectl"
    fake.write_text('#!/bin/sh\necho "$@" >> "$FAKE_LOG"\nif [ "$1" = apply ]; then cat > "$FAKE_LOG.stdin"; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log")}
    assert k8s("apply", "--name=mnist-b", "--", "--epochs=2", env=env).returncode == 0
    assert k8s("delete", "--name=mnist-b", "--namespace=ml", env=env).returncode == 0
    assert (tmp_path / "log").read_text().splitlines() == [
        "apply -f -", "delete tfjob mnist-b --namespace ml --ignore-not-found"]
    assert (tmp_path / "log.stdin").read_text() == k8s("render", "--name=mnist-b", "--", "--epochs=2").stdout

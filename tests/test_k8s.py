"""launch/k8s.sh: the TrainJob (Kubeflow Trainer v2) or TFJob (the v1 operator), claim and NetworkPolicy it
renders, checked against Kubeflow's and Kubernetes' own models (a TrainJob against each supported Trainer
release's), the restricted Pod Security Standard and the policy's semantics; apply and delete through kubectl (a
fake one here: no cluster is reachable); a TrainJob's chief and worker as processes in network namespaces of their
own, as pods."""

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

from api_models import TRAINER_RELEASES, check_for_release, check_manifest, trainer_spec_fields
from helpers import REPO

SCRIPT = os.path.join(REPO, "launch", "k8s.sh")


def k8s(*args, env=None):
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=30
    )


def render(*args) -> dict:
    result = k8s("render", *args)
    assert result.returncode == 0 and not result.stderr, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    for document in documents:
        check_manifest(document)
    return {d["kind"]: d for d in documents}


def pod_templates(manifests: dict) -> dict:
    """Every pod template of the rendered job, by role."""
    if "TFJob" in manifests:
        return {kind.lower(): r["template"] for kind, r in manifests["TFJob"]["spec"]["tfReplicaSpecs"].items()}
    jobs = manifests["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"]
    return {job["name"]: job["template"]["spec"]["template"] for job in jobs}


def test_the_rendered_tfjob_has_a_chief_workers_a_claim_and_a_policy():
    manifests = render(
        "--api=tfjob",
        "--image=registry.example/distmnist:0.1.0",
        "--namespace=ml",
        "--name=mnist-a",
        "--workers=3",
        "--gpus=2",
        "--pvc=runs",
        "--pvc-size=20Gi",
        "--storage-class=fast",
        "--active-deadline=7200",
        "--max-restarts=3",
        "--",
        "--epochs=3",
        "--batch_size=256",
    )
    assert set(manifests) == {"PersistentVolumeClaim", "NetworkPolicy", "TFJob"}  # no Service, no Ingress
    claim, job = manifests["PersistentVolumeClaim"], manifests["TFJob"]
    assert claim["metadata"] == {"name": "runs", "namespace": "ml"}
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi" and claim["spec"]["storageClassName"] == "fast"
    assert job["metadata"] == {"name": "mnist-a", "namespace": "ml"}
    # ExitCode restarts of 128 and above are not counted by backoffLimit (kubeflow/trainer#2045): the deadline
    # bounds the job's life whatever its pods do.
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200 and job["spec"]["runPolicy"]["backoffLimit"] == 3
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    replicas = job["spec"]["tfReplicaSpecs"]
    assert {kind: r["replicas"] for kind, r in replicas.items()} == {"Chief": 1, "Worker": 3}
    for kind, replica in replicas.items():
        assert replica["restartPolicy"] == "ExitCode"  # 1-127 permanent, 128+ retried: distmnist's statuses
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"  # the operator's default container: it gets TF_CONFIG
        assert container["image"] == "registry.example/distmnist:0.1.0"
        # GPUs asked for: a pod that gets none stops (exit 2) instead of training on its CPU.
        assert container["args"] == [
            "--logdir=/runs",
            "--run_name=mnist-a",
            "--require_gpus",
            "--epochs=3",
            "--batch_size=256",
        ]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
        assert "ports" not in container and "command" not in container  # the image's entry point
        mounted = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert mounted == (["/runs"] if kind == "Chief" else [])  # the chief alone writes the run directory
    assert replicas["Chief"]["template"]["spec"]["volumes"] == [
        {"name": "runs", "persistentVolumeClaim": {"claimName": "runs"}}
    ]


def test_the_rendered_trainjob_runs_a_chief_and_workers_on_its_own_runtime():
    manifests = render(
        "--image=registry.example/distmnist:0.1.0",
        "--namespace=ml",
        "--name=mnist-a",
        "--workers=3",
        "--gpus=2",
        "--active-deadline=7200",
        "--max-restarts=3",
        "--",
        "--epochs=3",
    )
    assert set(manifests) == {"PersistentVolumeClaim", "NetworkPolicy", "TrainingRuntime", "TrainJob"}
    runtime, job = manifests["TrainingRuntime"], manifests["TrainJob"]
    assert runtime["metadata"] == job["metadata"] == {"name": "mnist-a", "namespace": "ml"}
    assert job["spec"] == {
        "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "mnist-a"},
        "activeDeadlineSeconds": 7200,
    }
    jobset = runtime["spec"]["template"]["spec"]
    assert jobset["network"]["enableDNSHostnames"]  # pods reachable as NAME-ROLE-0-INDEX.NAME
    # 1-127 fail the pod's Job through its podFailurePolicy, and that fails the JobSet; anything else restarts the
    # whole JobSet (a lone restarted worker could not rejoin the collective), at most --max-restarts times.
    assert jobset["failurePolicy"] == {
        "maxRestarts": 3,
        "rules": [{"name": "permanent", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
    }
    jobs = {j["name"]: j for j in jobset["replicatedJobs"]}
    assert list(jobs) == ["chief", "worker"] and all(j["replicas"] == 1 for j in jobs.values())
    # The chief is the trainer Trainer v2 knows (its container must be named node); the workers a second job.
    assert jobs["chief"]["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    for role, count in (("chief", 1), ("worker", 3)):
        spec = jobs[role]["template"]["spec"]
        assert (spec["parallelism"], spec["completions"], spec["completionMode"]) == (count, count, "Indexed")
        assert spec["backoffLimit"] == 0
        (rule,) = spec["podFailurePolicy"]["rules"]
        assert rule["action"] == "FailJob" and rule["onExitCodes"] == {"operator": "In", "values": list(range(1, 128))}
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["name"] == "node" and container["image"] == "registry.example/distmnist:0.1.0"
        assert container["args"] == ["--logdir=/runs", "--run_name=mnist-a", "--require_gpus", "--epochs=3"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env == {
            "DISTMNIST_JOBSET_NAME": {"fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/jobset-name']"}},
            "DISTMNIST_JOBSET_ROLE": {
                "fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']"}
            },
            "DISTMNIST_JOBSET_WORKERS": "3",
        }
        mounted = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert mounted == (["/runs"] if role == "chief" else [])  # the chief alone has the run directory
        assert ("volumes" in pod) == (role == "chief")


def test_defaults_and_no_gpus():
    for api in ("tfjob", "trainjob"):
        manifests = render(f"--api={api}", "--gpus=0", "--workers=0")
        pods = pod_templates(manifests)
        assert set(pods) == {"chief"}
        assert "resources" not in pods["chief"]["spec"]["containers"][0]
        assert "--require_gpus" not in pods["chief"]["spec"]["containers"][0]["args"]  # a CPU job
        assert "storageClassName" not in manifests["PersistentVolumeClaim"]["spec"]
    assert render()["TrainJob"]["spec"]["activeDeadlineSeconds"] == 86400  # the documented default: a day
    assert render("--api=tfjob")["TFJob"]["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400


def jobs_of(manifests: dict) -> dict:
    """The JobSet's replicated Jobs' specs, by name."""
    jobs = manifests["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"]
    return {job["name"]: job["template"]["spec"] for job in jobs}


@pytest.mark.network  # each release's models, from PyPI once
@pytest.mark.parametrize("release", sorted(TRAINER_RELEASES))
def test_each_trainer_release_takes_what_render_makes_for_it(release):
    """A TrainJob has spec.activeDeadlineSeconds from Trainer 2.2 on only, and `kubectl apply` validates strictly:
    for 2.0 and 2.1 the deadline is on each of the JobSet's Jobs, and a Job past it fails the JobSet."""
    args = ("--workers=3", "--gpus=2", "--active-deadline=7200")
    rendered = [render(f"--trainer={release}", *args), render(f"--trainer=v{release}.0", "--workers=0", "--gpus=0")]
    newest = render(*args)  # what render made for every release before --trainer
    documents = [m[kind] for m in rendered for kind in ("TrainingRuntime", "TrainJob")] + [newest["TrainJob"]]
    *errors, newest_error = check_for_release(release, documents)
    assert errors == [None] * 4, errors
    manifests = rendered[0]
    rules = manifests["TrainingRuntime"]["spec"]["template"]["spec"]["failurePolicy"]["rules"]
    if release in ("2.0", "2.1"):
        assert newest_error == "TrainJob.spec: TrainerV1alpha1TrainJobSpec has no field activeDeadlineSeconds"
        assert "activeDeadlineSeconds" not in manifests["TrainJob"]["spec"]
        assert {name: job["activeDeadlineSeconds"] for name, job in jobs_of(manifests).items()} == {
            "chief": 7200,
            "worker": 7200,
        }
        assert rules[1] == {"name": "deadline", "action": "FailJobSet", "onJobFailureReasons": ["DeadlineExceeded"]}
    else:
        assert newest_error is None and manifests == newest
        assert manifests["TrainJob"]["spec"]["activeDeadlineSeconds"] == 7200
        assert not any("activeDeadlineSeconds" in job for job in jobs_of(manifests).values())
        assert [rule["name"] for rule in rules] == ["permanent"]


ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict) -> list:
    """Where a pod spec breaks the "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/
    pod-security-standards, as of Kubernetes 1.30), which a namespace labelled
    pod-security.kubernetes.io/enforce=restricted enforces at admission."""
    found = []
    pod_context = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"{key} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    if pod_context.get("runAsUser") == 0:
        found.append("the pod runs as UID 0")
    if pod_context.get("sysctls"):
        found.append("the pod sets sysctls")
    for container in pod.get("initContainers", []) + pod["containers"]:
        context, where = container.get("securityContext", {}), f"container {container['name']}"
        if context.get("privileged"):
            found.append(f"{where} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where} does not set allowPrivilegeEscalation: false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where} does not drop ALL capabilities")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where} adds capabilities")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{where} may run as root (runAsNonRoot)")
        if context.get("runAsUser") == 0:
            found.append(f"{where} runs as UID 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where} has no RuntimeDefault or Localhost seccompProfile")
        if any("hostPort" in port for port in container.get("ports", [])):
            found.append(f"{where} uses a hostPort")
    return found


@pytest.mark.parametrize("api", ["trainjob", "tfjob"])
def test_every_pod_passes_the_restricted_pod_security_standard(api):
    pods = pod_templates(render(f"--api={api}", "--workers=2"))
    assert set(pods) == {"chief", "worker"}
    for role, template in pods.items():
        assert restricted_violations(template["spec"]) == [], role
        assert template["spec"]["automountServiceAccountToken"] is False  # no API credentials in the pods
    # The check itself: the pods as they were before seccompProfile, and a privileged one, are refused.
    spec = pods["chief"]["spec"]
    del spec["securityContext"]["seccompProfile"], spec["containers"][0]["securityContext"]["seccompProfile"]
    spec["containers"][0]["securityContext"]["privileged"] = True
    assert restricted_violations(spec) == [
        "container {} is privileged".format(spec["containers"][0]["name"]),
        "container {} has no RuntimeDefault or Localhost seccompProfile".format(spec["containers"][0]["name"]),
    ]


def admits(policy: dict, pod_labels: dict, source_labels: dict, source_namespace: str) -> bool:
    """Whether a NetworkPolicy lets a pod (source_labels, source_namespace) reach a pod with pod_labels in the
    policy's namespace, on any port: Kubernetes' semantics for Ingress policies (a pod no policy selects is open
    to all; a selected pod takes only what some rule admits; a podSelector alone means the policy's namespace)."""

    def matches(selector, labels):
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and not selector.get(
            "matchExpressions"
        )

    if not matches(policy["spec"]["podSelector"], pod_labels) or "Ingress" not in policy["spec"]["policyTypes"]:
        return True
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", [{}]) or [{}]:
            if "ipBlock" in peer:
                return True  # an address range: taken as admitting strangers
            same_namespace = source_namespace == policy["metadata"]["namespace"]
            namespace_ok = same_namespace if "namespaceSelector" not in peer else True
            if namespace_ok and matches(peer.get("podSelector", {}), source_labels):
                return True
    return False


@pytest.mark.parametrize("api", ["trainjob", "tfjob"])
def test_only_the_jobs_own_pods_reach_its_pods(api):
    manifests = render(f"--api={api}", "--namespace=ml", "--name=mnist-a", "--workers=2")
    policy = manifests["NetworkPolicy"]
    assert policy["metadata"] == {"name": "mnist-a-members-only", "namespace": "ml"}
    assert "ports" not in policy["spec"]["ingress"][0]  # gRPC and NCCL's ports alike
    members = [t["metadata"]["labels"] for t in pod_templates(manifests).values()]
    stranger_pods = [
        ({"app": "web"}, "ml"),
        ({"app.kubernetes.io/name": "distmnist", "app.kubernetes.io/instance": "mnist-b"}, "ml"),
        (members[0], "other-namespace"),
    ]  # the same labels in another namespace: a stranger too
    for target in members:
        for source in members:
            assert admits(policy, target, source, "ml")
        for labels, namespace in stranger_pods:
            assert not admits(policy, target, labels, namespace), (labels, namespace)
    # The check itself: with no policy (as k8s.sh rendered before), every stranger gets in.
    open_policy = {**policy, "spec": {**policy["spec"], "podSelector": {"matchLabels": {"app": "nothing"}}}}
    assert admits(open_policy, members[0], {"app": "web"}, "ml")


def test_the_model_check_can_fail():
    job = render("--api=tfjob")["TFJob"]
    job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match=r"V1Container has no field imagePullPolicyy"):
        check_manifest(job)
    del job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["imagePullPolicyy"]
    del job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(AssertionError, match=r"V1Container: Invalid value for `name`, must not be `None`"):
        check_manifest(job)
    manifests = render()
    runtime, trainjob = manifests["TrainingRuntime"], manifests["TrainJob"]
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
        "imagePullPolicyy"
    ] = "Always"
    with pytest.raises(AssertionError, match=r"IoK8sApiCoreV1Container has no field imagePullPolicyy"):
        check_manifest(runtime)
    del runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][
        0
    ]["imagePullPolicyy"]
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]["generateName"] = "x-"
    with pytest.raises(AssertionError, match=r"IoK8sApimachineryPkgApisMetaV1ObjectMeta has no field generateName"):
        check_manifest(runtime)  # the CRDs keep only name, namespace, labels, annotations, finalizers there
    trainjob["spec"]["activeDeadline"] = 60
    with pytest.raises(AssertionError, match=r"TrainerV1alpha1TrainJobSpec has no field activeDeadline"):
        check_manifest(trainjob)
    del trainjob["spec"]["activeDeadline"], trainjob["spec"]["runtimeRef"]
    with pytest.raises(AssertionError, match=r"spec.runtimeRef\n  Field required"):
        check_manifest(trainjob)


@pytest.mark.slow  # a script started many times
@pytest.mark.parametrize(
    "args, message",
    [
        (("render", "--name=Big_Name"), "--name must be a lower-case DNS label"),
        (("render", "--name=1mnist"), "--name must be a lower-case DNS label that starts with a letter"),
        (("render", "--trainer=2.4"), "--trainer must be a Kubeflow Trainer release from 2.0 to 2.3"),
        (("render", "--trainer=1.9"), "--trainer must be a Kubeflow Trainer release from 2.0 to 2.3"),
        (("render", "--api=tfjob", "--trainer=2.1"), "--trainer is for --api=trainjob"),
        (("render", "--workers=-1"), "--workers must be a whole number"),
        (("render", "--workers", "-1"), "--workers must be a whole number"),
        (("render", "--gpus=two"), "--gpus must be a whole number"),
        (("render", "--pvc-size=5GB"), "--pvc-size must read like 5Gi"),
        (("render", "--api=v3"), "--api must be trainjob or tfjob"),
        (("render", "--active-deadline=0"), "--active-deadline must be a positive number of seconds"),
        (("render", "--max-restarts=x"), "--max-restarts must be a whole number"),
        (("render", "--name"), "--name needs a value (--name VALUE or --name=VALUE)"),
        (("render", "--name", "--workers=1"), "--name needs a value"),
        (("render", "--name="), "--name needs a value"),
        (("render", "--", "--logdir=/elsewhere"), "--logdir=/elsewhere is set by k8s.sh"),
        (("render", "--", "--norequire_gpus"), "--norequire_gpus is set by k8s.sh"),
        (("render", "--", "epochs=3"), "train flags go after -- as --flag=value"),
        (("render", "--bogus"), "unknown option '--bogus'"),
        (("render", "--bogus=1"), "unknown option '--bogus=1'"),
        (("launch",), "unknown action 'launch'"),
        (("render", "apply"), "say render, apply or delete"),
    ],
)
def test_bad_options_get_one_line(args, message, tmp_path):
    fake, log = fake_kubectl(tmp_path)
    result = k8s(*args, env=fake)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("k8s.sh: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert k8s(*["apply" if a == "render" else a for a in args], env=fake).returncode == 2
    assert not log.exists()  # kubectl never called: nothing applied


def options_in_help(script: str) -> list:
    """Every option the script's --help lists (lines that start with the option)."""
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30).stdout
    return sorted(set(re.findall(r"^\s+(--[a-z][-a-z]*)[= ]", help_text, re.M)))


SAMPLES = {
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


@pytest.mark.slow  # a script started many times
def test_every_option_takes_both_forms():
    assert options_in_help(SCRIPT) == sorted(SAMPLES)
    for option, value in SAMPLES.items():
        joined, spaced = k8s("render", f"{option}={value}"), k8s("render", option, value)
        assert joined.returncode == 0 and joined.stdout == spaced.stdout, option
        assert joined.stdout != k8s("render").stdout, option  # the option took effect


FAKE_KUBECTL = r"""#!/bin/sh
echo "$@" >> "$FAKE_LOG"
case $1 in
  api-resources) printf "pods\n$FAKE_SERVES\n" ;;
  # explain: the fields $FAKE_EXPLAINS lists exist; any other is missing, as kubectl says it
  explain)
    for field in $FAKE_EXPLAINS; do [ "$field" = "$2" ] && { echo "FIELD: ${2##*.}"; exit 0; }; done
    echo "error: field \"${2##*.}\" does not exist" >&2
    exit 1 ;;
  apply)
    if [ "$2" = --dry-run=server ]; then
      cat > "$FAKE_LOG.dry-run"
      [ -z "$FAKE_REFUSE" ] || { printf "$FAKE_REFUSE" >&2; exit 1; }
    else
      cat > "$FAKE_LOG.stdin"
    fi ;;
esac
"""
# What a cluster with Trainer 2.2 or later explains (the fields apply asks about).
EXPLAINS_V22 = "trainjobs.spec.runtimeRef trainjobs.spec.activeDeadlineSeconds trainingruntimes.spec.template"
EXPLAIN = "--api-version=trainer.kubeflow.org/v1alpha1"


def fake_kubectl(tmp_path, serves="", explains=EXPLAINS_V22, refuse=""):
    """A kubectl for a cluster that serves `serves` (api-resources), explains the `explains` fields and refuses
    a server dry run with `refuse` on stderr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_SERVES": serves,
        "FAKE_EXPLAINS": explains,
        "FAKE_REFUSE": refuse,
    }, log


@pytest.mark.slow  # a script started many times
@pytest.mark.parametrize(
    "serves, api",
    [
        ("trainjobs.trainer.kubeflow.org\\ntrainingruntimes.trainer.kubeflow.org", "trainjob"),
        ("tfjobs.kubeflow.org", "tfjob"),
        ("trainjobs.trainer.kubeflow.org\\ntfjobs.kubeflow.org", "trainjob"),
    ],
)
def test_apply_and_delete_use_the_api_the_cluster_serves(tmp_path, serves, api):
    env, log = fake_kubectl(tmp_path, serves)
    assert k8s("apply", "--name=mnist-b", "--", "--epochs=2", env=env).returncode == 0
    assert k8s("delete", "--name=mnist-b", "--namespace=ml", env=env).returncode == 0
    deletes = {
        "trainjob": [
            "delete trainjob mnist-b --namespace ml --ignore-not-found",
            "delete trainingruntime mnist-b --namespace ml --ignore-not-found",
        ],
        "tfjob": ["delete tfjob mnist-b --namespace ml --ignore-not-found"],
    }[api]
    policy = "delete networkpolicy mnist-b-members-only --namespace ml --ignore-not-found"
    explains = {
        "trainjob": [
            f"explain trainjobs.spec.runtimeRef {EXPLAIN}",
            f"explain trainingruntimes.spec.template {EXPLAIN}",
            f"explain trainjobs.spec.activeDeadlineSeconds {EXPLAIN}",
        ],
        "tfjob": [],
    }[api]
    assert log.read_text().splitlines() == [
        "api-resources -o name",
        *explains,
        "apply --dry-run=server --validate=strict -f -",
        "apply --validate=strict -f -",
        "api-resources -o name",
        *deletes,
        policy,
    ]
    assert (tmp_path / "log.stdin").read_text() == k8s(
        "render", f"--api={api}", "--name=mnist-b", "--", "--epochs=2"
    ).stdout


@pytest.mark.slow  # a script started many times
def test_apply_on_a_cluster_without_kubeflow_says_so_and_applies_nothing(tmp_path):
    env, log = fake_kubectl(tmp_path, "jobs.batch")
    result = k8s("apply", env=env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert (
        "serves neither Kubeflow Trainer v2 (trainjobs.trainer.kubeflow.org) nor the v1 training operator"
        in result.stderr
    )
    assert log.read_text().splitlines() == ["api-resources -o name"]
    (tmp_path / "explicit").mkdir()
    env, log = fake_kubectl(tmp_path / "explicit", "jobs.batch")
    assert k8s("apply", "--api=tfjob", env=env).returncode == 0  # an explicit --api is not second-guessed
    assert log.read_text().splitlines() == [
        "apply --dry-run=server --validate=strict -f -",
        "apply --validate=strict -f -",
    ]


def without_trainjob(rendered: str) -> str:
    """The rendered manifests but the TrainJob (the last document)."""
    return rendered[: rendered.rindex("---\napiVersion: trainer.kubeflow.org/v1alpha1\nkind: TrainJob")]


@pytest.mark.slow  # a script started many times
@pytest.mark.network  # each release's models, from PyPI once
@pytest.mark.parametrize("release", ["2.1", "2.3"])
def test_apply_renders_for_the_trainer_the_cluster_serves(tmp_path, release):
    """The fake cluster explains the TrainJob and TrainingRuntime fields of that release's models; apply renders
    what render --trainer makes for it (which the release's models take: the test above), the server checks all
    but the TrainJob in a dry run first, and then all of it is applied."""
    fields = trainer_spec_fields(release)
    explains = " ".join(f"{path}.{field}" for path, names in fields.items() for field in names)
    env, log = fake_kubectl(tmp_path, "trainjobs.trainer.kubeflow.org", explains)
    args = ("--name=mnist-c", "--workers=2", "--active-deadline=600", "--", "--epochs=2")
    result = k8s("apply", *args, env=env)
    assert result.returncode == 0 and not result.stderr, result.stderr
    expected = k8s("render", f"--trainer={release}", *args).stdout
    assert (tmp_path / "log.stdin").read_text() == expected
    assert (tmp_path / "log.dry-run").read_text() == without_trainjob(expected)
    assert log.read_text().splitlines()[-2:] == [
        "apply --dry-run=server --validate=strict -f -",
        "apply --validate=strict -f -",
    ]


REFUSAL = (
    'Error from server (BadRequest): error when creating "STDIN": TrainingRuntime in version "v1alpha1" '
    'cannot be handled as a TrainingRuntime: strict decoding error: unknown field "spec.template.spec.x"\n'
    'Error from server (Forbidden): error when creating "STDIN": persistentvolumeclaims is forbidden\n'
)


@pytest.mark.slow  # a script started many times
@pytest.mark.parametrize(
    "api, explains, refuse, message",
    [
        # Trainer serving another version of its API (or none that kubectl can read): nothing is sent at all.
        (
            "trainjob",
            "",
            "",
            (
                "k8s.sh: the cluster does not serve the Trainer API k8s.sh renders (trainer.kubeflow.org/"
                "v1alpha1 trainjobs.spec.runtimeRef, Trainer 2.0 to 2.3), nothing applied: error: field "
                '"runtimeRef" does not exist'
            ),
        ),
        # The server refuses a manifest in the dry run: nothing is applied.
        (
            "trainjob",
            EXPLAINS_V22,
            REFUSAL,
            (
                "k8s.sh: the cluster refuses the manifests (kubectl apply --dry-run=server), "
                "nothing applied: " + REFUSAL.splitlines()[0] + " (and 1 more lines)"
            ),
        ),
        ("tfjob", "", REFUSAL, "k8s.sh: the cluster refuses the manifests"),
    ],
    ids=["another-trainer-api", "trainjob-refused-in-the-dry-run", "tfjob-refused-in-the-dry-run"],
)
def test_apply_refuses_in_one_line_before_creating_anything(tmp_path, api, explains, refuse, message):
    serves = {"trainjob": "trainjobs.trainer.kubeflow.org", "tfjob": "tfjobs.kubeflow.org"}[api]
    env, log = fake_kubectl(tmp_path, serves, explains, refuse)
    result = k8s("apply", env=env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "apply --validate=strict -f -" not in log.read_text().splitlines()  # nothing created
    assert not (tmp_path / "log.stdin").exists()


class Pods:
    """Pods on one machine: each a network namespace of its own (as a pod has), joined by veth pairs to a bridge-
    less point-to-point link, with the JobSet's host names in its /etc/hosts (`ip netns exec` mounts
    /etc/netns/NS/hosts there), so that every process binds the same port as it does in its pod. Addresses from
    TEST-NET-1 (192.0.2.0/24), which exist only inside these namespaces. Needs root (CI runs as root)."""

    def __init__(self, hosts: dict):
        tag = f"{os.getpid() % 100000}"
        self.names = {host: f"dm{tag}{i}" for i, host in enumerate(hosts)}
        self.addresses = hosts
        self.made = []

    def __enter__(self):
        if os.geteuid() != 0 or not shutil.which("ip"):
            pytest.skip("network namespaces need root and iproute2's ip")
        (first, a), (second, b) = self.names.items()
        for ns in (a, b):
            self._ip("netns", "add", ns)
            self.made.append(ns)
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            with open(f"/etc/netns/{ns}/hosts", "w") as hosts:
                hosts.write("127.0.0.1 localhost\n" + "".join(f"{ip} {host}\n" for host, ip in self.addresses.items()))
        self._ip("link", "add", f"{a}v", "type", "veth", "peer", "name", f"{b}v")
        for host, ns in self.names.items():
            self._ip("link", "set", f"{ns}v", "netns", ns)
            self._ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", f"{ns}v")
            self._ip("-n", ns, "link", "set", f"{ns}v", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)

    @staticmethod
    def _ip(*args):
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def popen(self, host, argv, env, log):
        return subprocess.Popen(
            ["ip", "netns", "exec", self.names[host], *argv], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )


@pytest.mark.slow
@pytest.mark.cluster
def test_a_trainjobs_chief_and_worker_train_to_the_end_from_the_environment_their_pods_get(tmp_path, tiny_npz_dir):
    """The TrainingRuntime's pods as processes: each gets the env the rendered manifest gives (the JobSet labels
    through the downward API, JOB_COMPLETION_INDEX as Kubernetes sets it for an Indexed Job) and no TF_CONFIG, and
    reaches the other by its JobSet host name on port 2222."""
    rendered = k8s("render", "--name=mnist", "--workers=1", "--gpus=0").stdout  # CPU pods: no --require_gpus
    runtime = {d["kind"]: d for d in yaml.safe_load_all(rendered)}
    jobs = {j["name"]: j for j in runtime["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"]}
    hosts = {"mnist-chief-0-0.mnist": "192.0.2.1", "mnist-worker-0-0.mnist": "192.0.2.2"}
    labels = {"jobset.sigs.k8s.io/jobset-name": "mnist"}  # what JobSet puts on each pod
    procs, logs = {}, {}
    with Pods(hosts) as pods:
        for role, host in (("chief", "mnist-chief-0-0.mnist"), ("worker", "mnist-worker-0-0.mnist")):
            (container,) = jobs[role]["template"]["spec"]["template"]["spec"]["containers"]
            pod_labels = {**labels, "jobset.sigs.k8s.io/replicatedjob-name": role}
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env["JOB_COMPLETION_INDEX"] = "0"
            for variable in container["env"]:
                if "value" in variable:
                    env[variable["name"]] = variable["value"]
                else:
                    key = re.fullmatch(
                        r"metadata\.labels\['(.+)'\]", variable["valueFrom"]["fieldRef"]["fieldPath"]
                    ).group(1)
                    env[variable["name"]] = pod_labels[key]
            args = [a.replace("/runs", str(tmp_path / role)) for a in container["args"]]
            logs[role] = open(tmp_path / f"{role}.log", "w")
            procs[role] = pods.popen(
                host,
                [
                    sys.executable,
                    "-m",
                    "distmnist.train",
                    *args,
                    f"--data_dir={tiny_npz_dir}",
                    "--max_steps=40",
                    "--batch_size=32",
                    "--log_every=10",
                    "--eval_every=20",
                ],
                env,
                logs[role],
            )
        try:
            statuses = {role: proc.wait(timeout=240) for role, proc in procs.items()}
        finally:
            for role, proc in procs.items():
                proc.kill()
                logs[role].close()
    output = {role: (tmp_path / f"{role}.log").read_text() for role in procs}
    assert statuses == {"chief": 0, "worker": 0}, output
    assert "MultiWorkerMirroredStrategy" in output["chief"] and "replicas:             2" in output["chief"]
    assert (tmp_path / "chief" / "mnist" / "run.json").exists()  # the chief wrote the run
    assert not (tmp_path / "worker" / "mnist").exists()  # the worker wrote nothing

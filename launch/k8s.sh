#!/usr/bin/env bash
# Train on Kubernetes with Kubeflow: a chief and workers, each a pod of the job image (see Dockerfile / make
# image), a PersistentVolumeClaim for the run directory (a restarted chief resumes from its checkpoints), and a
# NetworkPolicy that lets only the job's own pods reach them (TensorFlow's gRPC servers run whatever graph they
# are sent). Two APIs:
#   trainjob  Kubeflow Trainer v2: a TrainJob on a TrainingRuntime of this job's own (a JobSet of a `chief` and
#             a `worker` job); distmnist builds its TF_CONFIG from JobSet's stable host names and indices.
#   tfjob     the v1 training operator (1.9.x): a TFJob; the operator writes TF_CONFIG.
#
#   launch/k8s.sh render [options] [-- train flags]   # print the manifests; runs nothing
#   launch/k8s.sh apply  [options] [-- train flags]   # kubectl apply them
#   launch/k8s.sh delete [options]                    # kubectl delete the job (the claim and its runs stay)
#
# Options, as --opt=value or --opt value (defaults in brackets):
#   --api=API             trainjob or tfjob [render: trainjob; apply, delete: what the cluster serves]
#   --image=IMAGE         the job image, pushed where the cluster pulls from [distmnist:0.1.0]
#   --namespace=NS        [default]
#   --name=NAME           the job's name, also the run's --run_name [distmnist]
#   --workers=N           workers besides the chief (N >= 0) [1]
#   --gpus=G              GPUs per pod (nvidia.com/gpu) [1]
#   --pvc=CLAIM           the claim that holds <logdir>/<name> [distmnist-runs]
#   --pvc-size=SIZE       its size when this creates it [5Gi]
#   --storage-class=SC    its storage class [the cluster's default]
#   --active-deadline=S   seconds the job may live, whatever its pods' exits, before it is failed [86400]
#   --max-restarts=N      restarts of the whole job after retryable exits (128 and above) [6]
#
# Exit statuses decide restarts: 1-127 are permanent (2: bad input, 1: the loss diverged) and fail the job; 128
# and above are retried (138: a peer was lost, 143: stopped by SIGTERM, as on preemption; 137: killed), and the
# same command resumes from the chief's latest checkpoint. --max-restarts and --active-deadline bound a job that
# keeps failing. Only the chief mounts the claim (it alone writes the run directory), so ReadWriteOnce is enough.
# Pods meet the "restricted" Pod Security Standard (non-root, no privilege escalation, no capabilities, the
# runtime's default seccomp profile, no service-account token).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=options.sh
source "$(dirname "$0")/options.sh"

help() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}
die() { echo "k8s.sh: $*" >&2; exit 2; }

api="" image=distmnist:0.1.0 namespace=default name=distmnist workers=1 gpus=1 pvc=distmnist-runs pvc_size=5Gi
storage_class="" active_deadline=86400 max_restarts=6
VALUE_OPTIONS=(--api:api --image:image --namespace:namespace --name:name --workers:workers --gpus:gpus --pvc:pvc
  --pvc-size:pvc_size --storage-class:storage_class --active-deadline:active_deadline --max-restarts:max_restarts)
SWITCH_OPTIONS=()
[[ $# -ge 1 ]] || { help >&2; exit 2; }
parse_options "$@"
train_flags=(${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"})
[[ ${#WORDS[@]} -eq 1 ]] || die "say render, apply or delete (see --help)"
action=${WORDS[0]}
case $action in render | apply | delete) ;; *) die "unknown action '$action' (render, apply or delete)" ;; esac

# Kubernetes names: lower-case RFC 1123 labels.
dns_label='^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
[[ -z $api || $api == trainjob || $api == tfjob ]] || die "--api must be trainjob or tfjob, got '$api'"
[[ $name =~ $dns_label && ${#name} -le 40 ]] || die "--name must be a lower-case DNS label of at most 40 characters, got '$name'"
[[ $namespace =~ $dns_label ]] || die "--namespace must be a lower-case DNS label, got '$namespace'"
[[ $pvc =~ $dns_label ]] || die "--pvc must be a lower-case DNS label, got '$pvc'"
[[ $workers =~ ^[0-9]+$ ]] || die "--workers must be a whole number (workers besides the chief), got '$workers'"
[[ $gpus =~ ^[0-9]+$ ]] || die "--gpus must be a whole number, got '$gpus'"
[[ $pvc_size =~ ^[1-9][0-9]*(Mi|Gi|Ti)$ ]] || die "--pvc-size must read like 5Gi, got '$pvc_size'"
[[ $active_deadline =~ ^[1-9][0-9]*$ ]] || die "--active-deadline must be a positive number of seconds, got '$active_deadline'"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, got '$max_restarts'"
[[ -n $image && ! $image =~ [[:space:]] ]] || die "--image must name an image, got '$image'"
for flag in ${train_flags[@]+"${train_flags[@]}"}; do
  if train_flag_sets "$flag" logdir run_name require_gpus; then
    die "$flag is set by k8s.sh (the claim's /runs, --name, --gpus)"
  fi
done

# The API the cluster serves (apply, delete), unless --api says: Trainer v2 first, then the v1 operator.
served_api() {
  local resources
  resources=$(kubectl api-resources -o name 2>/dev/null) || die "kubectl api-resources failed: is kubectl pointed at the cluster?"
  if grep -qx 'trainjobs.trainer.kubeflow.org' <<<"$resources"; then
    echo trainjob
  elif grep -qx 'tfjobs.kubeflow.org' <<<"$resources"; then
    echo tfjob
  else
    die "the cluster serves neither Kubeflow Trainer v2 (trainjobs.trainer.kubeflow.org) nor the v1 training" \
      "operator (tfjobs.kubeflow.org): install one, or render with --api and apply the manifests yourself"
  fi
}
if [[ -z $api ]]; then
  if [[ $action == render ]]; then api=trainjob; else api=$(served_api); fi
fi

if [[ $action == delete ]]; then
  if [[ $api == trainjob ]]; then
    kubectl delete trainjob "$name" --namespace "$namespace" --ignore-not-found
    kubectl delete trainingruntime "$name" --namespace "$namespace" --ignore-not-found
  else
    kubectl delete tfjob "$name" --namespace "$namespace" --ignore-not-found
  fi
  exec kubectl delete networkpolicy "$name-members-only" --namespace "$namespace" --ignore-not-found
fi

# JSON strings (YAML's flow style accepts them): quotes and backslashes escaped.
q() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
args="[$(q "--logdir=/runs"), $(q "--run_name=$name")"
# A pod that asked for GPUs and got none stops (exit 2, permanent) instead of training on its CPU.
((gpus > 0)) && args+=", $(q "--require_gpus")"
for flag in ${train_flags[@]+"${train_flags[@]}"}; do args+=", $(q "$flag")"; done
args+="]"
labels="{app.kubernetes.io/name: distmnist, app.kubernetes.io/instance: $(q "$name")}"

# One pod template, at indentation INDENT: pod INDENT CONTAINER_NAME MOUNT(0/1) [RESTART_POLICY [ENV_YAML]].
pod() {
  local indent=$1 container=$2 mount=$3 restart=${4:-} env=${5:-}
  {
    cat <<EOF
metadata:
  labels: ${labels}
spec:
EOF
    [[ -n $restart ]] && echo "  restartPolicy: ${restart}"
    cat <<EOF
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    fsGroup: 1000
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: ${container}
      image: $(q "$image")
      args: ${args}
EOF
    [[ -n $env ]] && printf '%s\n' "$env"
    cat <<EOF
      securityContext:
        allowPrivilegeEscalation: false
        runAsNonRoot: true
        capabilities:
          drop: ["ALL"]
        seccompProfile:
          type: RuntimeDefault
EOF
    if ((gpus > 0)); then
      cat <<EOF
      resources:
        limits:
          nvidia.com/gpu: "${gpus}"
EOF
    fi
    if ((mount)); then
      cat <<EOF
      volumeMounts:
        - name: runs
          mountPath: /runs
  volumes:
    - name: runs
      persistentVolumeClaim:
        claimName: $(q "$pvc")
EOF
    fi
  } | sed "s/^/$(printf "%${indent}s")/"
}

claim_and_policy() {
  cat <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $(q "$pvc")
  namespace: $(q "$namespace")
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: ${pvc_size}
EOF
  [[ -n $storage_class ]] && echo "  storageClassName: $(q "$storage_class")"
  cat <<EOF
---
# Only the job's own pods reach its pods, on any port (TensorFlow's gRPC port, NCCL's connections): the
# cluster's other pods and anything outside it are refused, where the cluster's network plugin enforces policies.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: $(q "$name-members-only")
  namespace: $(q "$namespace")
spec:
  podSelector:
    matchLabels: ${labels}
  policyTypes: ["Ingress"]
  ingress:
    - from:
        - podSelector:
            matchLabels: ${labels}
EOF
}

# pods ROLE: how many pods a role has: one chief, --workers workers (maybe none).
pods() { if [[ ${1,,} == chief ]]; then echo 1; else echo "$workers"; fi; }

render_tfjob() {
  cat <<EOF
---
apiVersion: kubeflow.org/v1
kind: TFJob
metadata:
  name: $(q "$name")
  namespace: $(q "$namespace")
spec:
  runPolicy:
    cleanPodPolicy: Running
    backoffLimit: ${max_restarts}
    activeDeadlineSeconds: ${active_deadline}
    ttlSecondsAfterFinished: 604800
  tfReplicaSpecs:
EOF
  local type count
  for type in Chief Worker; do
    count=$(pods "$type")
    ((count > 0)) || continue
    cat <<EOF
    ${type}:
      replicas: ${count}
      restartPolicy: ExitCode
      template:
EOF
    # The operator gives TF_CONFIG to the container named tensorflow.
    pod 8 tensorflow "$([[ $type == Chief ]] && echo 1 || echo 0)"
  done
}

# Exit statuses 1-127 fail a pod's Job at once (the JobSet then fails); 128 and above restart the JobSet.
permanent_statuses=$(seq -s ', ' 1 127)
jobset_env() {
  cat <<EOF
      env:
        - name: DISTMNIST_JOBSET_NAME
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['jobset.sigs.k8s.io/jobset-name']"}}
        - name: DISTMNIST_JOBSET_ROLE
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']"}}
        - name: DISTMNIST_JOBSET_WORKERS
          value: "${workers}"
EOF
}

render_trainjob() {
  cat <<EOF
---
# The job's own runtime: a JobSet of a chief (the trainer's "node" container, which alone mounts the claim) and
# the workers, each pod reachable as NAME-ROLE-0-INDEX.NAME. distmnist builds TF_CONFIG from DISTMNIST_JOBSET_*
# and the Indexed Job's JOB_COMPLETION_INDEX.
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainingRuntime
metadata:
  name: $(q "$name")
  namespace: $(q "$namespace")
spec:
  mlPolicy:
    numNodes: 1
  template:
    spec:
      network:
        enableDNSHostnames: true
        publishNotReadyAddresses: true
      failurePolicy:
        maxRestarts: ${max_restarts}
        rules:
          - name: permanent
            action: FailJobSet
            onJobFailureReasons: ["PodFailurePolicy"]
      replicatedJobs:
EOF
  local role count
  for role in chief worker; do
    count=$(pods "$role")
    ((count > 0)) || continue
    echo "        - name: ${role}"
    echo "          replicas: 1"
    echo "          template:"
    if [[ $role == chief ]]; then
      echo "            metadata:"
      echo "              labels: {trainer.kubeflow.org/trainjob-ancestor-step: trainer}"
    fi
    cat <<EOF
            spec:
              parallelism: ${count}
              completions: ${count}
              completionMode: Indexed
              backoffLimit: 0
              podFailurePolicy:
                rules:
                  - action: FailJob
                    onExitCodes: {operator: In, values: [${permanent_statuses}]}
              template:
EOF
    pod 16 node "$([[ $role == chief ]] && echo 1 || echo 0)" Never "$(jobset_env)"
  done
  cat <<EOF
---
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata:
  name: $(q "$name")
  namespace: $(q "$namespace")
spec:
  runtimeRef:
    apiGroup: trainer.kubeflow.org
    kind: TrainingRuntime
    name: $(q "$name")
  activeDeadlineSeconds: ${active_deadline}
EOF
}

render() {
  claim_and_policy
  if [[ $api == trainjob ]]; then render_trainjob; else render_tfjob; fi
}

if [[ $action == render ]]; then
  render
else
  render | kubectl apply -f -
fi

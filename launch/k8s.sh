#!/usr/bin/env bash
# Train on Kubernetes with Kubeflow: a chief and workers, each a pod of the job image (see Dockerfile / make
# image), a PersistentVolumeClaim for the run directory (a restarted chief resumes from its checkpoints), and a
# NetworkPolicy that lets only the job's own pods reach them (TensorFlow's gRPC servers run whatever graph they
# are sent). Two APIs:
#   trainjob  Kubeflow Trainer v2 (releases 2.0 to 2.3): a TrainJob on a TrainingRuntime of this job's own (a
#             JobSet of a `chief` and a `worker` job); distmnist builds its TF_CONFIG from JobSet's stable host
#             names and indices.
#   tfjob     the v1 training operator (1.9.x): a TFJob; the operator writes TF_CONFIG.
#
#   launch/k8s.sh render [options] [-- train flags]   # print the manifests; runs nothing
#   launch/k8s.sh apply  [options] [-- train flags]   # render for what the cluster serves, check, kubectl apply
#   launch/k8s.sh delete [options]                    # kubectl delete the job (the claim and its runs stay)
#
# Options, as --opt=value or --opt value (defaults in brackets):
#   --api=API             trainjob or tfjob [render: trainjob; apply, delete: what the cluster serves]
#   --trainer=VERSION     render only: the Trainer release to render a TrainJob for, 2.0 to 2.3 [2.3]; apply
#                         renders for the TrainJob schema the cluster serves
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
# keeps failing. A TrainJob holds the deadline from Trainer 2.2 on; before, each of the JobSet's Jobs does (so it
# counts from each restart, and a Job past it fails the JobSet). Only the chief mounts the claim (it alone writes the run directory), so ReadWriteOnce is enough.
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
storage_class="" active_deadline=86400 max_restarts=6 trainer=""
VALUE_OPTIONS=(--api:api --image:image --namespace:namespace --name:name --workers:workers --gpus:gpus --pvc:pvc
  --pvc-size:pvc_size --storage-class:storage_class --active-deadline:active_deadline --max-restarts:max_restarts
  --trainer:trainer)
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
# A TrainJob's name starts with a letter (a validation rule of its CRD, which a server dry run does not reach).
[[ $name =~ $dns_label && $name =~ ^[a-z] && ${#name} -le 40 ]] ||
  die "--name must be a lower-case DNS label that starts with a letter, of at most 40 characters, got '$name'"
[[ $namespace =~ $dns_label ]] || die "--namespace must be a lower-case DNS label, got '$namespace'"
[[ $pvc =~ $dns_label ]] || die "--pvc must be a lower-case DNS label, got '$pvc'"
[[ $workers =~ ^[0-9]+$ ]] || die "--workers must be a whole number (workers besides the chief), got '$workers'"
[[ $gpus =~ ^[0-9]+$ ]] || die "--gpus must be a whole number, got '$gpus'"
[[ $pvc_size =~ ^[1-9][0-9]*(Mi|Gi|Ti)$ ]] || die "--pvc-size must read like 5Gi, got '$pvc_size'"
[[ $active_deadline =~ ^[1-9][0-9]*$ ]] || die "--active-deadline must be a positive number of seconds, got '$active_deadline'"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, got '$max_restarts'"
[[ -n $image && ! $image =~ [[:space:]] ]] || die "--image must name an image, got '$image'"
# Trainer's releases as 2.N or v2.N.P. What differs between them for this job: spec.activeDeadlineSeconds, which
# a TrainJob has from 2.2 on (a strict apply refuses it on 2.0 and 2.1).
if [[ -n $trainer ]]; then
  [[ $action == render ]] || die "--trainer is for render (apply renders for the TrainJob schema the cluster serves)"
  [[ $api != tfjob ]] || die "--trainer is for --api=trainjob (Kubeflow Trainer v2), not the v1 operator's TFJob"
  [[ $trainer =~ ^v?2\.([0-3])(\.[0-9]+)?$ ]] ||
    die "--trainer must be a Kubeflow Trainer release from 2.0 to 2.3 (like 2.1 or v2.2.1), got '$trainer'"
  trainjob_deadline=$((BASH_REMATCH[1] >= 2))
else
  trainjob_deadline=1  # render: the newest release; apply: what the cluster says (below)
fi
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

# The TrainingRuntime: its JobSet fails at once on a permanent status (and, where the Jobs hold the deadline, on
# a Job past it); any other failure restarts it.
render_runtime() {
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
EOF
  if ((!trainjob_deadline)); then
    cat <<EOF
          - name: deadline
            action: FailJobSet
            onJobFailureReasons: ["DeadlineExceeded"]
EOF
  fi
  echo "      replicatedJobs:"
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
EOF
    ((trainjob_deadline)) || echo "              activeDeadlineSeconds: ${active_deadline}"
    cat <<EOF
              podFailurePolicy:
                rules:
                  - action: FailJob
                    onExitCodes: {operator: In, values: [${permanent_statuses}]}
              template:
EOF
    pod 16 node "$([[ $role == chief ]] && echo 1 || echo 0)" Never "$(jobset_env)"
  done
}

render_trainjob() {
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
EOF
  ((trainjob_deadline)) && echo "  activeDeadlineSeconds: ${active_deadline}"
  return 0
}

# Everything but the TrainJob, which Trainer's webhook admits only once its runtime exists (so a server dry run of
# it fails on a first apply).
render_ahead() {
  claim_and_policy
  if [[ $api == trainjob ]]; then render_runtime; else render_tfjob; fi
}
render() {
  render_ahead
  if [[ $api == trainjob ]]; then render_trainjob; fi
}

if [[ $action == render ]]; then
  render
  exit 0
fi

# kubectl's error on one line: its first line, and how many more there were.
one_line() {
  local first more
  first=$(grep -m1 . <<<"$1")
  more=$(($(grep -c . <<<"$1") - 1))
  ((more > 0)) && first+=" (and $more more lines)"
  echo "$first"
}

# The Trainer API the cluster serves, read with kubectl explain (the API server's OpenAPI, which every signed-in
# user may read): the two kinds at the version rendered, and whether a TrainJob has spec.activeDeadlineSeconds
# (Trainer 2.2 and later). When explain cannot find that field the deadline goes on the Jobs, which every release
# takes.
if [[ $api == trainjob ]]; then
  for field in trainjobs.spec.runtimeRef trainingruntimes.spec.template; do
    if ! explained=$(kubectl explain "$field" --api-version=trainer.kubeflow.org/v1alpha1 2>&1 >/dev/null); then
      die "the cluster does not serve the Trainer API k8s.sh renders (trainer.kubeflow.org/v1alpha1 $field," \
        "Trainer 2.0 to 2.3), nothing applied: $(one_line "$explained")"
    fi
  done
  if kubectl explain trainjobs.spec.activeDeadlineSeconds --api-version=trainer.kubeflow.org/v1alpha1 \
    >/dev/null 2>&1; then
    trainjob_deadline=1
  else
    trainjob_deadline=0
  fi
fi
# The API server checks everything the TrainJob waits for (strict field validation, as apply does, and admission)
# and keeps none of it: whatever it refuses stops the apply here, before a single object exists.
if ! refused=$(render_ahead | kubectl apply --dry-run=server --validate=strict -f - 2>&1 >/dev/null); then
  die "the cluster refuses the manifests (kubectl apply --dry-run=server), nothing applied: $(one_line "$refused")"
fi
render | kubectl apply --validate=strict -f -

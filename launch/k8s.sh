#!/usr/bin/env bash
# Train on Kubernetes with the Kubeflow training operator: a TFJob (a chief and workers, each a container of the
# job image, see Dockerfile / make image) and a PersistentVolumeClaim for the run directory, so that a restarted
# chief resumes from its checkpoints.
#
#   launch/k8s.sh render [options] [-- train flags]   # print the manifests; runs nothing
#   launch/k8s.sh apply  [options] [-- train flags]   # kubectl apply them
#   launch/k8s.sh delete [options]                    # kubectl delete the TFJob (the claim and its runs stay)
#
# Options (defaults in brackets):
#   --image=IMAGE         the job image, pushed where the cluster pulls from [distmnist:0.1.0]
#   --namespace=NS        [default]
#   --name=NAME           the TFJob's name, also the run's --run_name [distmnist]
#   --workers=N           workers besides the chief (N >= 0) [1]
#   --gpus=G              GPUs per pod (nvidia.com/gpu) [1]
#   --pvc=CLAIM           the claim that holds <logdir>/<name> [distmnist-runs]
#   --pvc-size=SIZE       its size when this creates it [5Gi]
#   --storage-class=SC    its storage class [the cluster's default]
#
# Restarts follow distmnist's exit statuses (restartPolicy ExitCode): 1-127 are permanent (2: bad input, 1: the
# loss diverged) and end the job; 128 and above are retried (138: a peer was lost, 143: stopped by SIGTERM, as on
# preemption; 137: killed), and the same command resumes from the chief's latest checkpoint. Only the chief
# mounts the claim (it alone writes the run directory), so a ReadWriteOnce claim is enough. No Service or port is
# added beyond the headless services the operator makes for the job's own TF_CONFIG.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
fail() { echo "k8s.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || usage
action=$1
shift
case $action in render | apply | delete) ;; -h | --help) usage ;; *) fail "unknown action '$action' (render, apply or delete)" ;; esac

image=distmnist:0.1.0 namespace=default name=distmnist workers=1 gpus=1 pvc=distmnist-runs pvc_size=5Gi
storage_class=""
train_flags=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --image=*) image=${1#*=} ;;
    --namespace=*) namespace=${1#*=} ;;
    --name=*) name=${1#*=} ;;
    --workers=*) workers=${1#*=} ;;
    --gpus=*) gpus=${1#*=} ;;
    --pvc=*) pvc=${1#*=} ;;
    --pvc-size=*) pvc_size=${1#*=} ;;
    --storage-class=*) storage_class=${1#*=} ;;
    --) shift; train_flags=("$@"); break ;;
    -h | --help) usage ;;
    *) fail "unknown option '$1' (see --help; train flags go after --)" ;;
  esac
  shift
done

# Kubernetes names: lower-case RFC 1123 labels.
dns_label='^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
[[ $name =~ $dns_label && ${#name} -le 40 ]] || fail "--name must be a lower-case DNS label of at most 40 characters, got '$name'"
[[ $namespace =~ $dns_label ]] || fail "--namespace must be a lower-case DNS label, got '$namespace'"
[[ $pvc =~ $dns_label ]] || fail "--pvc must be a lower-case DNS label, got '$pvc'"
[[ $workers =~ ^[0-9]+$ ]] || fail "--workers must be a whole number (workers besides the chief), got '$workers'"
[[ $gpus =~ ^[0-9]+$ ]] || fail "--gpus must be a whole number, got '$gpus'"
[[ $pvc_size =~ ^[1-9][0-9]*(Mi|Gi|Ti)$ ]] || fail "--pvc-size must read like 5Gi, got '$pvc_size'"
[[ -n $image && ! $image =~ [[:space:]] ]] || fail "--image must name an image, got '$image'"
for flag in "${train_flags[@]}"; do
  case $flag in
    --logdir=* | --run_name=*) fail "$flag is set by k8s.sh (the claim's /runs and --name)" ;;
    --*) ;;
    *) fail "train flags go after -- as --flag=value, got '$flag'" ;;
  esac
done

if [[ $action == delete ]]; then
  exec kubectl delete tfjob "$name" --namespace "$namespace" --ignore-not-found
fi

# JSON strings (YAML's flow style accepts them): quotes and backslashes escaped.
q() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
args="[$(q "--logdir=/runs"), $(q "--run_name=$name")"
for flag in "${train_flags[@]}"; do args+=", $(q "$flag")"; done
args+="]"

# One replica type's spec: replica_spec TYPE COUNT MOUNT(0/1).
replica_spec() {
  local type=$1 count=$2 mount=$3
  cat <<EOF
    ${type}:
      replicas: ${count}
      restartPolicy: ExitCode
      template:
        metadata:
          labels:
            app.kubernetes.io/name: distmnist
            app.kubernetes.io/instance: $(q "$name")
        spec:
          automountServiceAccountToken: false
          securityContext:
            runAsNonRoot: true
            runAsUser: 1000
            runAsGroup: 1000
            fsGroup: 1000
          containers:
            - name: tensorflow
              image: $(q "$image")
              args: ${args}
              securityContext:
                allowPrivilegeEscalation: false
                capabilities:
                  drop: ["ALL"]
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
}

render() {
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
apiVersion: kubeflow.org/v1
kind: TFJob
metadata:
  name: $(q "$name")
  namespace: $(q "$namespace")
spec:
  runPolicy:
    cleanPodPolicy: Running
    backoffLimit: 6
    ttlSecondsAfterFinished: 604800
  tfReplicaSpecs:
EOF
  replica_spec Chief 1 1
  ((workers > 0)) && replica_spec Worker "$workers" 0
  return 0
}

if [[ $action == render ]]; then
  render
else
  render | kubectl apply -f -
fi

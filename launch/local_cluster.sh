#!/usr/bin/env bash
# Rehearse a multi-worker cluster on this machine: N distmnist.train workers on free loopback ports, each with
# its own TF_CONFIG, logs streamed with a [worker i] prefix. Exits with the first non-zero status (and stops
# the other workers), or 0 when all finish.
#
#   launch/local_cluster.sh N [--dry-run] [-- train flags...]
#   launch/local_cluster.sh 2 -- --max_steps=200 --run_name=rehearsal
#   launch/local_cluster.sh 2 --dry-run        # print each worker's environment and command, start nothing
#
# Options go anywhere before `--` (as in every launch script); everything after it goes to distmnist.train.
# GPUs: each worker sees its own disjoint share of this host's GPUs through CUDA_VISIBLE_DEVICES (the GPUs
# that CUDA_VISIBLE_DEVICES already names, else those `nvidia-smi -L` lists; none without either), so no two
# TensorFlow processes take memory on one GPU. With G GPUs, each worker gets G / N of them (G >= N).
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=options.sh
source "$(dirname "$0")/options.sh"

help() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "local_cluster: $*" >&2; exit 2; }
dry_run=0
VALUE_OPTIONS=()
SWITCH_OPTIONS=(--dry-run:dry_run)
parse_options "$@"
[[ ${#WORDS[@]} -eq 1 && ${WORDS[0]} =~ ^[1-9][0-9]*$ ]] ||
  die "say how many workers, one number N >= 1 (launch/local_cluster.sh N [--dry-run] [-- train flags]), got" \
    "'${WORDS[*]}'"
workers=${WORDS[0]}
set -- ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"}

# The host's GPUs, as CUDA indices or UUIDs.
gpus=()
if [[ -v CUDA_VISIBLE_DEVICES ]]; then
  IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null; then
  while read -r line; do
    [[ $line =~ ^GPU\ ([0-9]+): ]] && gpus+=("${BASH_REMATCH[1]}")
  done < <(nvidia-smi -L 2>/dev/null || true)
fi
per_worker=0
if ((${#gpus[@]})); then
  per_worker=$((${#gpus[@]} / workers))
  if ((per_worker == 0)); then
    echo "local_cluster: $workers workers but ${#gpus[@]} GPU(s): start at most ${#gpus[@]} workers, or train on" \
      "the CPU with CUDA_VISIBLE_DEVICES=''" >&2
    exit 2
  fi
fi
# gpu_slice I: worker I's CUDA_VISIBLE_DEVICES (empty when the host has no GPU).
gpu_slice() {
  local first=$(($1 * per_worker)) slice
  slice=$(IFS=,; echo "${gpus[*]:first:per_worker}")
  echo "${slice}"
}

repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi

# Ask the kernel for N free ports (bound together, so they are distinct), then release them for the workers.
ports=$("$PYTHON" - "$workers" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
read -r -a port_list <<<"$ports"
addresses=""
for port in "${port_list[@]}"; do addresses+="${addresses:+,}\"localhost:$port\""; done

pids=()
grace_s=30
cleanup() {
  # SIGTERM: the workers agree on a step, the chief checkpoints, all exit 143 (grace_s allows for that). A worker
  # blocked waiting for a lost peer cannot act on it: SIGKILL whoever is left after grace_s.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ((tick = 0; tick < grace_s * 5; tick++)); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$repo"
if ((dry_run)); then
  trap - EXIT
  for ((i = 0; i < workers; i++)); do
    tf_config="{\"cluster\": {\"worker\": [$addresses]}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
    printf "worker %d: TF_CONFIG='%s' CUDA_VISIBLE_DEVICES='%s'" "$i" "$tf_config" "$(gpu_slice "$i")"
    printf ' %q' "$PYTHON" -m distmnist.train "$@"
    printf '\n'
  done
  unused=$((${#gpus[@]} - per_worker * workers))
  if ((unused > 0)); then echo "local_cluster: $unused GPU(s) left unused (an equal share per worker)"; fi
  exit 0
fi
for ((i = 0; i < workers; i++)); do
  tf_config="{\"cluster\": {\"worker\": [$addresses]}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
  TF_CONFIG=$tf_config CUDA_VISIBLE_DEVICES=$(gpu_slice "$i") "$PYTHON" -m distmnist.train "$@" \
    > >(sed -u "s/^/[worker $i] /") 2>&1 &
  pids+=($!)
done

# Poll rather than `wait -n`: the first failure must stop the rest, whichever worker it is.
while ((${#pids[@]} > 0)); do
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null && continue
    status=0
    wait "${pids[$i]}" || status=$?
    unset "pids[$i]"
    if ((status != 0)); then
      echo "local_cluster: worker $i exited with status $status; stopping the others" >&2
      grace_s=5  # the others cannot finish a step without it: no checkpoint to wait for
      exit "$status"
    fi
  done
  sleep 0.2
done
trap - EXIT

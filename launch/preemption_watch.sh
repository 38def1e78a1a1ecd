#!/usr/bin/env bash
# Turns a cloud's preemption notice into SIGTERM for a training process, which then checkpoints and exits 143.
#
#   launch/preemption_watch.sh gcp PID    # GCE: instance/preempted = TRUE, or a TERMINATE maintenance event
#   launch/preemption_watch.sh aws PID    # EC2: a spot instance-action (two minutes' notice), IMDSv2
#
# The start-up scripts of gcp.sh and aws.sh run it beside distmnist.train. It exits 0 after sending the signal,
# 1 when PID ends first. DISTMNIST_METADATA_URL replaces the metadata server (tests), DISTMNIST_POLL_S the
# polling interval (5 s).
set -uo pipefail

cloud=${1:-}
pid=${2:-}
poll_s=${DISTMNIST_POLL_S:-5}
die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }
[[ $pid =~ ^[0-9]+$ ]] || die "usage: $(basename "$0") gcp|aws PID"

gcp_notice() {
  local base=${DISTMNIST_METADATA_URL:-http://metadata.google.internal}/computeMetadata/v1/instance
  curl -sf -m 5 -H 'Metadata-Flavor: Google' "$base/preempted" | grep -qx TRUE ||
    curl -sf -m 5 -H 'Metadata-Flavor: Google' "$base/maintenance-event" | grep -q TERMINATE
}

aws_notice() {
  local base=${DISTMNIST_METADATA_URL:-http://169.254.169.254} token
  token=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$base/latest/api/token") || return 1
  # 404 until the spot instance is to be stopped or terminated; then a JSON body with the action and time.
  curl -sf -m 5 -H "X-aws-ec2-metadata-token: $token" "$base/latest/meta-data/spot/instance-action"
}

notice() {
  case $cloud in
    gcp) gcp_notice ;;
    aws) aws_notice ;;
  esac
}
[[ $cloud == gcp || $cloud == aws ]] || die "the cloud must be gcp or aws, got '$cloud'"

while kill -0 "$pid" 2>/dev/null; do
  if notice >/dev/null; then
    echo "preemption notice from $cloud: SIGTERM to $pid (it checkpoints and exits 143)"
    kill -TERM "$pid"
    exit 0
  fi
  sleep "$poll_s"
done
exit 1

#!/usr/bin/env bash
# Train distmnist on N GPU VMs on Google Cloud, one MultiWorkerMirroredStrategy worker each.
#
#   launch/gcp.sh up --bucket gs://my-bucket --workers 2 -- --epochs=20
#   launch/gcp.sh down --workers 2
#   launch/gcp.sh up --bucket gs://my-bucket --dry-run     # print everything, run nothing
#
# `up` uploads this checkout (git archive HEAD) to the bucket, opens the gRPC port between cluster members
# only, and creates the VMs without public addresses; each VM's start-up script installs distmnist[gpu],
# fetches MNIST, trains, and the chief copies its run directory to gs://BUCKET/NAME/run; then every VM shuts
# down. `down` deletes the VMs and the firewall rule. Needs gcloud, a project with GPU quota, a subnet with
# Private Google Access and Cloud NAT (pip reaches PyPI through it), and a service account for the VMs that
# can read and write the bucket. No credentials are in this script or on the VMs beyond that identity.
# TensorFlow's gRPC servers run any graph sent to them: never open GRPC_PORT beyond the cluster.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

ZONE=${GCP_ZONE:-us-central1-a}
MACHINE_TYPE=${GCP_MACHINE_TYPE:-g2-standard-8}
ACCELERATOR=${GCP_ACCELERATOR:-nvidia-l4}
ACCELERATOR_COUNT=${GCP_ACCELERATOR_COUNT:-1}
IMAGE_FAMILY=${GCP_IMAGE_FAMILY:-common-cu123-debian-11-py310}
IMAGE_PROJECT=${GCP_IMAGE_PROJECT:-deeplearning-platform-release}
NETWORK=${GCP_NETWORK:-default}
SUBNET=${GCP_SUBNET:-default}
SERVICE_ACCOUNT=${GCP_SERVICE_ACCOUNT:-}
SPOT=${GCP_SPOT:-0}

help() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  common_help
  cat <<'HELP'
Google Cloud options:
  --zone ZONE               [GCP_ZONE, us-central1-a]
  --machine-type TYPE       [GCP_MACHINE_TYPE, g2-standard-8]
  --accelerator TYPE        [GCP_ACCELERATOR, nvidia-l4]
  --accelerator-count N     GPUs per VM [GCP_ACCELERATOR_COUNT, 1]
  --image-family FAMILY     [GCP_IMAGE_FAMILY, common-cu123-debian-11-py310] from --image-project
  --image-project PROJECT   [GCP_IMAGE_PROJECT, deeplearning-platform-release]
  --network NET, --subnet S [GCP_NETWORK, GCP_SUBNET, default]
  --service-account EMAIL   the VMs' identity [GCP_SERVICE_ACCOUNT, the project's default]
  --spot                    Spot VMs (cheaper, preemptible) [GCP_SPOT=1]
TensorBoard, never on a public interface:
  gcloud compute ssh NAME-0 --zone ZONE --tunnel-through-iap -- -L 6006:127.0.0.1:6006 \
    '/opt/distmnist/venv/bin/tensorboard --logdir /opt/distmnist/logs --host 127.0.0.1'
  then open http://127.0.0.1:6006 here.
HELP
}

parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while (($#)); do
  case $1 in
    --zone) ZONE=${2:?}; shift ;;
    --machine-type) MACHINE_TYPE=${2:?}; shift ;;
    --accelerator) ACCELERATOR=${2:?}; shift ;;
    --accelerator-count) ACCELERATOR_COUNT=${2:?}; shift ;;
    --image-family) IMAGE_FAMILY=${2:?}; shift ;;
    --image-project) IMAGE_PROJECT=${2:?}; shift ;;
    --network) NETWORK=${2:?}; shift ;;
    --subnet) SUBNET=${2:?}; shift ;;
    --service-account) SERVICE_ACCOUNT=${2:?}; shift ;;
    --spot) SPOT=1 ;;
    -h | --help) help; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
check_common
[[ $BUCKET == gs://* || $ACTION == down ]] || die "--bucket must be a gs:// URL, got '$BUCKET'"

hosts=()
for ((i = 0; i < WORKERS; i++)); do hosts+=("$NAME-$i"); done
firewall="$NAME-grpc"

if [[ $ACTION == down ]]; then
  run gcloud compute instances delete "${hosts[@]}" --zone "$ZONE" --quiet
  run gcloud compute firewall-rules delete "$firewall" --quiet
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
package_archive "$work/distmnist.tar.gz"
run gcloud storage cp "$work/distmnist.tar.gz" "$BUCKET/$NAME/distmnist.tar.gz"
# gRPC only between VMs carrying the cluster's tag: TensorFlow's servers must not be reachable from elsewhere.
run gcloud compute firewall-rules create "$firewall" --network "$NETWORK" --direction INGRESS \
  --allow "tcp:$GRPC_PORT" --source-tags "$NAME" --target-tags "$NAME"

echo "chief: ${hosts[0]} (worker 0 writes the run directory)"
for ((i = 0; i < WORKERS; i++)); do
  config=$(tf_config "$i" "${hosts[@]}")
  echo "TF_CONFIG[$i]: $config"
  startup_script "$i" gcp "gcloud storage cp" "gcloud storage rsync --recursive" "printf %s '$config'" >"$work/startup-$i.sh"
  echo "--- start-up script of ${hosts[$i]} ---"
  cat "$work/startup-$i.sh"
  echo "--- end ---"
  extra=()
  if ((SPOT)); then extra+=(--provisioning-model SPOT --instance-termination-action STOP); fi
  if [[ -n $SERVICE_ACCOUNT ]]; then extra+=(--service-account "$SERVICE_ACCOUNT"); fi
  run gcloud compute instances create "${hosts[$i]}" --zone "$ZONE" --machine-type "$MACHINE_TYPE" \
    --accelerator "type=$ACCELERATOR,count=$ACCELERATOR_COUNT" --maintenance-policy TERMINATE \
    --image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT" --boot-disk-size 100GB \
    --subnet "$SUBNET" --no-address --tags "$NAME" --scopes cloud-platform \
    --metadata install-nvidia-driver=True --metadata-from-file "startup-script=$work/startup-$i.sh" \
    ${extra[@]+"${extra[@]}"}
done
echo "the chief's run lands in $BUCKET/$NAME/run; follow a VM with:"
echo "  gcloud compute ssh ${hosts[0]} --zone $ZONE --tunnel-through-iap -- tail -f /var/log/distmnist.log"
echo "then remove everything with: $0 down --name $NAME --workers $WORKERS --zone $ZONE"

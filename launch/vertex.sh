#!/usr/bin/env bash
# Train on Vertex AI custom training: a CustomJob of the job image (see Dockerfile / make image, pushed to
# Artifact Registry), worker pool 0 the chief, pool 1 the workers, each replica one MultiWorkerMirroredStrategy
# worker; Vertex sets TF_CONFIG, and distmnist writes where Vertex says (AIP_CHECKPOINT_DIR: the run directory,
# so a restarted job resumes; AIP_MODEL_DIR: the SavedModel; AIP_TENSORBOARD_LOG_DIR: the TensorBoard events).
#
#   launch/vertex.sh up --project=P --bucket=gs://B --image=REGION-docker.pkg.dev/P/REPO/distmnist:0.1.0 \
#     --service-account=SA@P.iam.gserviceaccount.com [-- train flags]
#   launch/vertex.sh up ... --dry-run       # print the job spec and the gcloud commands, run nothing
#   launch/vertex.sh down --project=P       # cancel the queued, pending or running jobs of that --name
#
# Options, as --opt=value or --opt value (defaults in brackets):
#   --project=P             the Google Cloud project [gcloud's configured project]
#   --region=R              [us-central1]
#   --bucket=gs://B         where the job's outputs go: gs://B/NAME/{checkpoints,model,logs} (required for up)
#   --image=URI             the job image in Artifact Registry (required for up)
#   --name=NAME             the job's display name, also its folder in the bucket [distmnist]
#   --workers=N             workers besides the chief [1]
#   --machine-type=T        [g2-standard-8]
#   --accelerator-type=A    a Vertex accelerator name, NONE for CPUs only [NVIDIA_L4]
#   --accelerator-count=C   per replica [1]
#   --service-account=SA    the job's own identity (required for up): roles/storage.objectAdmin on the bucket,
#                           with --tensorboard also roles/aiplatform.user, and nothing more
#   --tensorboard=ID        a Vertex AI TensorBoard instance (projects/P/locations/R/tensorboards/ID) to stream to
#   --dry-run               print, run nothing
#
# `up` again while a job of that --name, or one writing to the same folder, is queued, pending or running reports
# that job and submits none (a second job would train into the same folder beside it, and bill).
# scheduling.restartJobOnWorkerRestart is on: when any replica restarts, all do, and all resume from the
# chief's latest checkpoint in AIP_CHECKPOINT_DIR (a lone restarted worker could not rejoin a collective).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=options.sh
source "$(dirname "$0")/options.sh"

help() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}
die() { echo "vertex.sh: $*" >&2; exit 2; }

project="" region=us-central1 bucket="" image="" name=distmnist workers=1 machine_type=g2-standard-8
accelerator_type=NVIDIA_L4 accelerator_count=1 service_account="" tensorboard="" dry_run=0
VALUE_OPTIONS=(--project:project --region:region --bucket:bucket --image:image --name:name --workers:workers
  --machine-type:machine_type --accelerator-type:accelerator_type --accelerator-count:accelerator_count
  --service-account:service_account --tensorboard:tensorboard)
SWITCH_OPTIONS=(--dry-run:dry_run)
[[ $# -ge 1 ]] || { help >&2; exit 2; }
parse_options "$@"
train_flags=(${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"})
[[ ${#WORDS[@]} -eq 1 ]] || die "say up or down (see --help)"
action=${WORDS[0]}
case $action in up | down) ;; *) die "unknown action '$action' (up or down)" ;; esac

[[ $name =~ ^[a-z][-a-z0-9]{0,62}$ ]] || die "--name must be lower-case letters, digits and dashes (a folder in the bucket), got '$name'"
[[ $region =~ ^[a-z]+-[a-z]+[0-9]$ ]] || die "--region must be a Google Cloud region like us-central1, got '$region'"
[[ -z $project || $project =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] || die "--project must be a project ID, got '$project'"
[[ $workers =~ ^[0-9]+$ ]] || die "--workers must be a whole number (workers besides the chief), got '$workers'"
[[ $accelerator_count =~ ^[0-9]+$ ]] || die "--accelerator-count must be a whole number, got '$accelerator_count'"
[[ $accelerator_type =~ ^[A-Z0-9_]+$ ]] || die "--accelerator-type must be a Vertex accelerator name like NVIDIA_L4, got '$accelerator_type'"
[[ $machine_type =~ ^[a-z0-9]+-[a-z0-9-]+$ ]] || die "--machine-type must be a machine type like g2-standard-8, got '$machine_type'"
[[ -z $tensorboard || $tensorboard =~ ^projects/[^/]+/locations/[^/]+/tensorboards/[0-9]+$ ]] ||
  die "--tensorboard must read projects/P/locations/R/tensorboards/ID, got '$tensorboard'"
for flag in ${train_flags[@]+"${train_flags[@]}"}; do
  if train_flag_sets "$flag" logdir run_name; then die "$flag is set by Vertex AI (AIP_CHECKPOINT_DIR) for this job"; fi
  if train_flag_sets "$flag" require_gpus; then die "$flag is set by vertex.sh (from --accelerator-type and -count)"; fi
done

gcloud_base=(gcloud ai custom-jobs)
where=(--region="$region")
[[ -n $project ]] && where+=(--project="$project")

# Run a command, or only print it with --dry-run.
run() {
  printf '%q ' "$@" | sed 's/ $//'
  echo
  ((dry_run)) || "$@"
}

if [[ $action == down ]]; then
  # Every job of that name that has not ended: a queued or pending one would start later and bill.
  states="state=JOB_STATE_QUEUED OR state=JOB_STATE_PENDING OR state=JOB_STATE_RUNNING"
  list=("${gcloud_base[@]}" list "${where[@]}" --filter="displayName=$name AND ($states)" --format="value(name)")
  if ((dry_run)); then
    echo "# the queued, pending and running jobs named $name, then each one cancelled:"
    run "${list[@]}"
    run "${gcloud_base[@]}" cancel JOB_ID "${where[@]}"
    exit 0
  fi
  ids=$("${list[@]}") || die "could not list the jobs (gcloud ai custom-jobs list failed; see above)"
  [[ -n $ids ]] || { echo "vertex.sh: no queued, pending or running job named $name in $region"; exit 0; }
  for id in $ids; do run "${gcloud_base[@]}" cancel "${id##*/}" "${where[@]}"; done
  exit 0
fi

# A folder's name goes into a gcloud --filter: letters, digits and -_./ only.
[[ $bucket =~ ^gs://[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9](/[-_.a-zA-Z0-9/]*)?$ ]] ||
  die "--bucket must be a gs:// bucket (and folder: letters, digits, -_./) for the job's outputs, got '$bucket'"
[[ -n $image && ! $image =~ [[:space:]] ]] || die "--image must name the job image in Artifact Registry (see make image)"
# The job's identity: without one, Vertex's service agent runs it, which can read every bucket of the project
# (and a job with --tensorboard is refused).
roles="roles/storage.objectAdmin on $bucket"
[[ -n $tensorboard ]] && roles+=" and roles/aiplatform.user on the project (for --tensorboard)"
[[ $service_account =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]@[-a-z0-9.]+\.gserviceaccount\.com$ ]] ||
  die "--service-account must name the job's own service account (NAME@PROJECT.iam.gserviceaccount.com), holding" \
    "$roles and nothing more, got '$service_account'"

output=${bucket%/}/$name  # the job's AIP_* folders' root

# JSON strings, quotes and backslashes escaped.
q() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
args=""
# Replicas that asked for GPUs and got none stop (exit 2) instead of training on their CPUs.
[[ $accelerator_type != NONE && $accelerator_count -gt 0 ]] && args=$(q "--require_gpus")
for flag in ${train_flags[@]+"${train_flags[@]}"}; do args+="${args:+, }$(q "$flag")"; done

# One worker pool: pool REPLICAS.
pool() {
  local accelerator=""
  if [[ $accelerator_type != NONE && $accelerator_count -gt 0 ]]; then
    accelerator=", \"acceleratorType\": $(q "$accelerator_type"), \"acceleratorCount\": $accelerator_count"
  fi
  cat <<EOF
    {
      "machineSpec": {"machineType": $(q "$machine_type")${accelerator}},
      "replicaCount": "$1",
      "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100},
      "containerSpec": {"imageUri": $(q "$image"), "args": [${args}]}
    }
EOF
}

spec() {
  echo "{"
  echo '  "workerPoolSpecs": ['
  pool 1
  if ((workers > 0)); then
    echo "    ,"
    pool "$workers"
  fi
  echo "  ],"
  echo "  \"baseOutputDirectory\": {\"outputUriPrefix\": $(q "$output")},"
  echo "  \"serviceAccount\": $(q "$service_account"),"
  [[ -n $tensorboard ]] && echo "  \"tensorboard\": $(q "$tensorboard"),"
  echo '  "scheduling": {"restartJobOnWorkerRestart": true, "timeout": "86400s"}'
  echo "}"
}

# A job of this name, or one writing to this folder, that has not ended is reported instead of a second one: two
# jobs would train into one folder side by side (the second resuming from the first's checkpoints), both billing.
# One being cancelled still runs until its replicas stop (the chief checkpoints on SIGTERM): up waits for its end.
active="state=JOB_STATE_QUEUED OR state=JOB_STATE_PENDING OR state=JOB_STATE_RUNNING OR state=JOB_STATE_CANCELLING"
list=("${gcloud_base[@]}" list "${where[@]}"
  --filter="(displayName=$name OR jobSpec.baseOutputDirectory.outputUriPrefix='$output') AND ($active)"
  --format="value(name,displayName,state)")
if ((dry_run)); then
  echo "# a job named $name or writing to $output that has not ended is reported instead of submitting this one:"
  run "${list[@]}"
else
  found=$("${list[@]}") || die "could not list the jobs (gcloud ai custom-jobs list failed; see above)"
  if [[ -n $found ]]; then
    while read -r id display state; do
      [[ $state != JOB_STATE_CANCELLING ]] ||
        die "job ${id##*/} ($display), writing to $output, is being cancelled: up again once it has ended" \
          "(gcloud ai custom-jobs describe ${id##*/} --region=$region)"
    done <<<"$found"
    while read -r id display state; do
      echo "vertex.sh: job ${id##*/} ($display, $state) already trains into $output: no second job submitted" \
        "(vertex.sh down --name=$display cancels it)"
    done <<<"$found"
    exit 0
  fi
fi

config=$(mktemp "${TMPDIR:-/tmp}/vertex-job.XXXXXX.json")
trap 'rm -f "$config"' EXIT
spec >"$config"
echo "# the job spec ($config):"
cat "$config"
run "${gcloud_base[@]}" create "${where[@]}" --display-name="$name" --config="$config"

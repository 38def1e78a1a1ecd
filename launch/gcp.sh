#!/usr/bin/env bash
# Train distmnist on N GPU VMs on Google Cloud, one MultiWorkerMirroredStrategy worker each.
#
#   launch/gcp.sh up --bucket gs://my-bucket --workers 2 -- --epochs=20
#   launch/gcp.sh up --bucket gs://my-bucket --accelerator-count 2     # g2-standard-24: two L4s per VM
#   launch/gcp.sh down --workers 2
#   launch/gcp.sh up --bucket gs://my-bucket --dry-run                 # print everything, run nothing
#
# `up` checks the image family, the subnet's Private Google Access and the network's Cloud NAT (the VMs have
# no public address), uploads this checkout (git archive HEAD) to the bucket, gives the VMs a service account
# of the cluster's own that can use that bucket and nothing else, opens every port between the VMs that run as
# that account (the members) and SSH to IAP's range only, denies the rest, and creates the VMs. Each VM's
# start-up script installs distmnist[gpu] (the uploaded archive, unless it is the one installed) in a Python
# 3.10+ venv, waits for the NVIDIA driver, stops unless `python -m distmnist.doctor` says TensorFlow can use its
# GPUs, fetches MNIST and trains; the chief mirrors its run directory to gs://BUCKET/NAME/run after each
# checkpoint, at the end and from its shutdown script (so a preempted Spot VM saves its checkpoint), every VM its
# log; then every VM shuts down. `down` deletes what up made (the VMs, the firewall rules on --network for the
# account, the account up created) and goes on past what is gone.
# TensorFlow's gRPC servers run any graph sent to them: never open GRPC_PORT beyond the cluster.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

ZONE=${GCP_ZONE:-us-central1-a}
ACCELERATOR=${GCP_ACCELERATOR:-nvidia-l4}
ACCELERATOR_COUNT=${GCP_ACCELERATOR_COUNT:-}
MACHINE_TYPE=${GCP_MACHINE_TYPE:-}
# Deep Learning VM family: Ubuntu 22.04 (python3 3.10), NVIDIA driver 570 (CUDA 12.8), which serves TensorFlow
# 2.21's CUDA 12.5 wheels.
IMAGE_FAMILY=${GCP_IMAGE_FAMILY:-common-cu128-ubuntu-2204-nvidia-570}
IMAGE_PROJECT=${GCP_IMAGE_PROJECT:-deeplearning-platform-release}
NETWORK=${GCP_NETWORK:-default}
SUBNET=${GCP_SUBNET:-default}
SERVICE_ACCOUNT=${GCP_SERVICE_ACCOUNT:-}
SPOT=${GCP_SPOT:-0}
IAP_RANGE=35.235.240.0/20  # where IAP's TCP forwarding (gcloud compute ssh --tunnel-through-iap) comes from
ALLOW_PRIORITY=900 DENY_PRIORITY=1000  # firewall priorities: the lower number wins; a network's own rules: 1000+
IAM_WAIT_S=${DISTMNIST_IAM_WAIT_S:-180}
POLL_S=${DISTMNIST_POLL_S:-5}

help() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  common_help
  cat <<'HELP'
Google Cloud options:
  --zone ZONE               [GCP_ZONE, us-central1-a]
  --accelerator TYPE        GPU model [GCP_ACCELERATOR, nvidia-l4]: nvidia-l4 (G2), nvidia-tesla-a100,
                            nvidia-a100-80gb (A2), nvidia-h100-80gb (A3), or for N1 VMs nvidia-tesla-t4,
                            nvidia-tesla-v100, nvidia-tesla-p100, nvidia-tesla-p4
  --accelerator-count N     GPUs per VM [GCP_ACCELERATOR_COUNT, 1, or what --machine-type has]
  --machine-type TYPE       [GCP_MACHINE_TYPE, chosen from the two above: g2-standard-8/24/48/96 for 1/2/4/8
                            L4s, a2-highgpu-Ng, a2-ultragpu-Ng, a3-highgpu-Ng; n1-standard-8 for N1 GPUs].
                            A2, A3 and G2 types come with their GPUs; only N1 types take --accelerator
  --image-family FAMILY     [GCP_IMAGE_FAMILY, common-cu128-ubuntu-2204-nvidia-570] from --image-project;
                            pick one whose driver serves CUDA 12.5 (>= 555) and whose python3 is 3.10-3.13.
                            Check it: gcloud compute images describe-from-family FAMILY \
                              --project deeplearning-platform-release
  --image-project PROJECT   [GCP_IMAGE_PROJECT, deeplearning-platform-release]
  --network NET, --subnet S [GCP_NETWORK, GCP_SUBNET, default]; the subnet needs Private Google Access and
                            the network a Cloud NAT in the zone's region (up checks both)
  --service-account EMAIL   the VMs' identity, and their membership: the firewall admits the VMs that run as
                            it, so no other VM may [GCP_SERVICE_ACCOUNT, NAME-vm@PROJECT, which up creates
                            and allows the bucket's objects and nothing else]
  --spot                    Spot VMs (cheaper, preemptible) [GCP_SPOT=1]
TensorBoard, never on a public interface (IAP's SSH tunnel; up opens tcp:22 to IAP's range only):
  gcloud compute ssh NAME-0 --zone ZONE --tunnel-through-iap -- -L 6006:127.0.0.1:6006 \
    '/opt/distmnist/venv/bin/tensorboard --logdir /opt/distmnist/logs --host 127.0.0.1'
  then open http://127.0.0.1:6006 here.
HELP
}

# gpus_of MACHINE_TYPE: "MODEL COUNT" for the A2, A3 and G2 types that come with GPUs, "n1" for N1, "" else.
gpus_of() {
  case $1 in
    g2-standard-4 | g2-standard-8 | g2-standard-12 | g2-standard-16 | g2-standard-32) echo "nvidia-l4 1" ;;
    g2-standard-24) echo "nvidia-l4 2" ;;
    g2-standard-48) echo "nvidia-l4 4" ;;
    g2-standard-96) echo "nvidia-l4 8" ;;
    a2-highgpu-1g | a2-highgpu-2g | a2-highgpu-4g | a2-highgpu-8g) echo "nvidia-tesla-a100 ${1:11:1}" ;;
    a2-megagpu-16g) echo "nvidia-tesla-a100 16" ;;
    a2-ultragpu-1g | a2-ultragpu-2g | a2-ultragpu-4g | a2-ultragpu-8g) echo "nvidia-a100-80gb ${1:12:1}" ;;
    a3-highgpu-1g | a3-highgpu-2g | a3-highgpu-4g | a3-highgpu-8g) echo "nvidia-h100-80gb ${1:11:1}" ;;
    n1-*) echo n1 ;;
    *) echo "" ;;
  esac
}

# machine_for MODEL COUNT: the machine type that comes with COUNT GPUs of MODEL (N1 GPUs: n1-standard-8).
machine_for() {
  local model=$1 count=$2
  case "$model:$count" in
    nvidia-l4:1) echo g2-standard-8 ;;
    nvidia-l4:2) echo g2-standard-24 ;;
    nvidia-l4:4) echo g2-standard-48 ;;
    nvidia-l4:8) echo g2-standard-96 ;;
    nvidia-tesla-a100:[1248]) echo "a2-highgpu-${count}g" ;;
    nvidia-tesla-a100:16) echo a2-megagpu-16g ;;
    nvidia-a100-80gb:[1248]) echo "a2-ultragpu-${count}g" ;;
    nvidia-h100-80gb:[1248]) echo "a3-highgpu-${count}g" ;;
    nvidia-tesla-t4:[124] | nvidia-tesla-p100:[124] | nvidia-tesla-p4:[124] | nvidia-tesla-v100:[1248])
      echo n1-standard-8 ;;
    nvidia-l4:* | nvidia-tesla-a100:* | nvidia-a100-80gb:* | nvidia-h100-80gb:* | nvidia-tesla-*:*)
      die "$model does not come $count to a VM (L4: 1, 2, 4 or 8; A100: 1, 2, 4, 8 or 16; A100 80GB and H100:" \
        "1, 2, 4 or 8; T4, P100, P4: 1, 2 or 4; V100: 1, 2, 4 or 8)" ;;
    *) die "unknown --accelerator '$model' (see --help)" ;;
  esac
}

VALUE_OPTIONS=(--zone:ZONE --machine-type:MACHINE_TYPE --accelerator:ACCELERATOR --accelerator-count:ACCELERATOR_COUNT
  --image-family:IMAGE_FAMILY --image-project:IMAGE_PROJECT --network:NETWORK --subnet:SUBNET
  --service-account:SERVICE_ACCOUNT)
SWITCH_OPTIONS=(--spot:SPOT)
parse_common "$@"
check_common
[[ $BUCKET == gs://* || $ACTION == down ]] || die "--bucket must be a gs:// URL, got '$BUCKET'"
[[ -z $ACCELERATOR_COUNT || $ACCELERATOR_COUNT =~ ^[1-9][0-9]*$ ]] ||
  die "--accelerator-count must be a positive integer, got '$ACCELERATOR_COUNT'"
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone must look like us-central1-a, got '$ZONE'"
REGION=${ZONE%-*}

# The machine type and GPUs: A2/A3/G2 types come with theirs (no --accelerator), N1 types take --accelerator.
accelerator_flags=()
if [[ -z $MACHINE_TYPE ]]; then
  MACHINE_TYPE=$(machine_for "$ACCELERATOR" "${ACCELERATOR_COUNT:-1}")
fi
attached=$(gpus_of "$MACHINE_TYPE")
case $attached in
  "") die "--machine-type $MACHINE_TYPE takes no GPUs: use an A2, A3 or G2 type, or an N1 type with --accelerator" ;;
  n1)
    [[ $ACCELERATOR =~ ^nvidia-tesla-(t4|v100|p100|p4)$ ]] ||
      die "N1 machine types take nvidia-tesla-t4, -v100, -p100 or -p4, not $ACCELERATOR (L4: G2 types; A100: A2; H100: A3)"
    machine_for "$ACCELERATOR" "${ACCELERATOR_COUNT:-1}" >/dev/null
    accelerator_flags=(--accelerator "type=$ACCELERATOR,count=${ACCELERATOR_COUNT:-1}")
    ;;
  *)
    read -r model count <<<"$attached"
    if [[ -n $ACCELERATOR_COUNT && $ACCELERATOR_COUNT != "$count" ]]; then
      die "$MACHINE_TYPE comes with $count $model GPU(s), not $ACCELERATOR_COUNT: leave --machine-type out to get" \
        "the type with $ACCELERATOR_COUNT (for L4s: g2-standard-8/24/48/96 have 1/2/4/8)"
    fi
    ACCELERATOR=$model ACCELERATOR_COUNT=$count
    ;;
esac

hosts=()
for ((i = 0; i < WORKERS; i++)); do hosts+=("$NAME-$i"); done
grpc_rule="$NAME-grpc"
ssh_rule="$NAME-iap-ssh"
deny_rule="$NAME-deny"
sa_id="$NAME-vm"  # a service account id: 6-30 characters
if [[ -z $SERVICE_ACCOUNT ]]; then
  ((${#sa_id} >= 6 && ${#sa_id} <= 30)) ||
    die "--name makes the service account id '$sa_id', which must have 6-30 characters; pass --service-account"
elif [[ $SERVICE_ACCOUNT == *-compute@developer.gserviceaccount.com ]]; then
  die "--service-account $SERVICE_ACCOUNT is the project's default compute account, which other VMs run as: the" \
    "firewall rules admit and deny by the account, so the cluster needs one of its own (leave --service-account" \
    "out and up makes $sa_id)"
fi

project() {
  if ((DRY_RUN)); then echo "PROJECT"; else gcloud config get-value project 2>/dev/null; fi
}
# The VMs' identity, and their membership: the firewall rules admit and deny by it.
account=${SERVICE_ACCOUNT:-$sa_id@$(project).iam.gserviceaccount.com}

# exists DESCRIBE-COMMAND...: whether gcloud finds the thing (asked before making or removing it, so that up and
# down can run again after a partial run); a dry run finds nothing and prints every command.
exists() {
  ((!DRY_RUN)) && gcloud "$@" --format 'value(name)' >/dev/null 2>&1
}

# Membership is the VMs' service account, on both sides of the rule that opens every port between members: a
# network tag "doesn't offer any kind of access control" (Google's VPC firewall docs; anyone who can set tags on a
# VM in the network can take it), while running a VM as the account takes iam.serviceAccountUser on it. A rule
# names accounts or tags, never both ("targetServiceAccounts cannot be used at the same time as targetTags or
# sourceTags": the Compute API's Firewall resource). The deny rule covers the same VMs, by the same account: it
# outranks every allow rule of lower priority (a larger number), the network's own included: the default
# network's default-allow-internal (priority 65534) admits all of 10.128.0.0/9 to every port.
# A rule as gcloud describes it (RULE_FORMAT, the fields of `gcloud compute firewall-rules list`'s reference
# example, tabs made |) and as up makes it (rule_wanted) are compared field by field (RULE_FIELDS).
RULE_FORMAT='value(network.basename(),direction,priority,sourceRanges.list(),sourceServiceAccounts.list(),'
RULE_FORMAT+='sourceTags.list(),targetServiceAccounts.list(),targetTags.list(),allowed[].map().firewall_rule().list(),'
RULE_FORMAT+='denied[].map().firewall_rule().list(),disabled)'
RULE_FIELDS=(network direction priority source-ranges source-service-accounts source-tags target-service-accounts
  target-tags allow deny disabled)
rule_wanted() {  # rule_wanted RULE: the rule up makes, in RULE_FORMAT's fields
  case $1 in
    "$grpc_rule") echo "$NETWORK|INGRESS|$ALLOW_PRIORITY||$account||$account||tcp||false" ;;
    "$ssh_rule") echo "$NETWORK|INGRESS|$ALLOW_PRIORITY|$IAP_RANGE|||$account||tcp:22||false" ;;
    "$deny_rule") echo "$NETWORK|INGRESS|$DENY_PRIORITY|0.0.0.0/0|||$account|||all|false" ;;
  esac
}
make_rule() {  # make_rule RULE: gcloud's create for it
  local common=(--network "$NETWORK" --direction INGRESS --target-service-accounts "$account")
  case $1 in
    "$grpc_rule") run gcloud compute firewall-rules create "$1" "${common[@]}" --allow tcp \
      --source-service-accounts "$account" --priority "$ALLOW_PRIORITY" ;;
    "$ssh_rule") run gcloud compute firewall-rules create "$1" "${common[@]}" --allow tcp:22 \
      --source-ranges "$IAP_RANGE" --priority "$ALLOW_PRIORITY" ;;
    "$deny_rule") run gcloud compute firewall-rules create "$1" "${common[@]}" --action DENY --rules all \
      --source-ranges 0.0.0.0/0 --priority "$DENY_PRIORITY" ;;
  esac
}
describe_rule() {  # describe_rule RULE: the rule as it is, in RULE_FORMAT's fields, lower case; nothing if none
  local have
  have=$(gcloud compute firewall-rules describe "$1" --format "$RULE_FORMAT" 2>/dev/null) || return 0
  [[ -n $have ]] || return 0
  have=${have//$'\t'/|}
  [[ ${have##*|} ]] || have+=false  # disabled: false when the API leaves it out
  echo "${have,,}"
}
field() {  # field DESCRIPTION NAME: one field of a rule's description
  local -a fields
  local i
  IFS='|' read -r -a fields <<<"$1"
  for i in "${!RULE_FIELDS[@]}"; do
    if [[ ${RULE_FIELDS[i]} == "$2" ]]; then echo "${fields[i]:-}"; fi
  done
}
differences() {  # differences HAVE WANT: the fields in which the rule differs from what up makes, in words
  local name out=""
  for name in "${RULE_FIELDS[@]}"; do
    local have want
    have=$(field "$1" "$name") want=$(field "$2" "$name")
    [[ $have == "$want" ]] || out+="${out:+, }$name ${have:-none} (up: ${want:-none})"
  done
  echo "$out"
}

if [[ $ACTION == down ]]; then
  # What up made, and only that, each piece on its own, past whatever is already gone: the VMs that run as the
  # cluster's account, the rules on --network for that account (or for the tag NAME, as gcp.sh made them before
  # it used accounts), and the account up made unless something else still runs as it or names it. The status
  # says whether anything could not be removed.
  failed=()
  for host in "${hosts[@]}"; do
    if ((!DRY_RUN)); then
      if ! vm=$(gcloud compute instances describe "$host" --zone "$ZONE" \
        --format 'value(status,serviceAccounts[0].email)' 2>/dev/null); then
        echo "$host: already gone"; continue
      fi
      runs_as=$(cut -f2 <<<"$vm")
      if [[ $runs_as != "$account" ]]; then
        echo "$host: runs as ${runs_as:-no account}, not $account: not this cluster's, kept (down takes the" \
          "--service-account up had)"
        continue
      fi
    fi
    run gcloud compute instances delete "$host" --zone "$ZONE" --quiet || failed+=("$host")
  done
  # The deny rule goes last: until the VMs are gone it keeps the network's own rules away from their ports.
  foreign=()
  for rule in "$grpc_rule" "$ssh_rule" "$deny_rule"; do
    if ((!DRY_RUN)); then
      have=$(describe_rule "$rule")
      if [[ -z $have ]]; then echo "$rule: already gone"; continue; fi
      targets=$(field "$have" target-service-accounts) tags=$(field "$have" target-tags)
      if [[ $(field "$have" network) != "${NETWORK,,}" || ! ($targets == "${account,,}" || $tags == "${NAME,,}") ]]
      then
        echo "$rule: on network $(field "$have" network) for ${targets:-${tags:-every VM}}, not this cluster's" \
          "(network $NETWORK, account $account): kept"
        [[ $targets != *"${account,,}"* ]] || foreign+=("$rule")
        continue
      fi
    fi
    run gcloud compute firewall-rules delete "$rule" --quiet || failed+=("$rule")
  done
  if [[ -z $SERVICE_ACCOUNT ]]; then  # the one up made; one passed with --service-account is yours to keep
    users=""
    if ((!DRY_RUN)); then
      users=$(gcloud compute instances list --filter "serviceAccounts.email=$account" \
        --format 'value(name,zone.basename())' 2>/dev/null | tr '\t\n' '/ ') ||
        die "cannot list the VMs that run as $account (gcloud compute instances list failed)"
    fi
    if ((!DRY_RUN)) && ! exists iam service-accounts describe "$account"; then
      echo "$account: already gone"
    elif [[ -n ${users// /} || ${#foreign[@]} -gt 0 ]]; then
      echo "$account: still the identity of ${users:-no VM}${foreign[*]:+ and named by ${foreign[*]}}: kept"
    else
      run gcloud iam service-accounts delete "$account" --quiet || failed+=("$account")
    fi
  fi
  if ((${#failed[@]})); then die "could not remove: ${failed[*]} (see above); run down again or remove them by hand"; fi
  exit 0
fi

# Checks before anything is made: each failure is one line naming the fix. A dry run prints the queries.
ask() {  # a read-only query: printed like the commands, run unless --dry-run, its answer on stdout
  printf '+' >&3
  printf ' %q' "$@" >&3
  printf '\n' >&3
  if ((DRY_RUN)); then return 0; fi
  "$@" 2>/dev/null
}
exec 3>&1
image=$(ask gcloud compute images describe-from-family "$IMAGE_FAMILY" --project "$IMAGE_PROJECT" \
  --format 'value(name)') || image=""
if ((!DRY_RUN)) && [[ -z $image ]]; then
  die "image family $IMAGE_FAMILY is not in project $IMAGE_PROJECT (retired?); list current ones with: gcloud" \
    "compute images list --project $IMAGE_PROJECT --no-standard-images --filter='family~^common-cu'"
fi
google_access=$(ask gcloud compute networks subnets describe "$SUBNET" --region "$REGION" \
  --format 'value(privateIpGoogleAccess)') || google_access=""
if ((!DRY_RUN)) && [[ ${google_access,,} != true ]]; then
  die "subnet $SUBNET ($REGION) has no Private Google Access, which VMs without public addresses need for the" \
    "bucket: gcloud compute networks subnets update $SUBNET --region $REGION --enable-private-ip-google-access"
fi
routers=$(ask gcloud compute routers list --regions "$REGION" --format 'value(name,network.basename())') || routers=""
nat=""
while read -r router network; do
  [[ -n $router && $network == "$NETWORK" ]] || continue
  nat+=$(ask gcloud compute routers nats list --router "$router" --region "$REGION" --format 'value(name)') || true
done <<<"$routers"
if ((!DRY_RUN)) && [[ -z $nat ]]; then
  die "network $NETWORK has no Cloud NAT in $REGION, which VMs without public addresses need for PyPI: gcloud" \
    "compute routers create $NAME-router --network $NETWORK --region $REGION && gcloud compute routers nats create" \
    "$NAME-nat --router $NAME-router --region $REGION --auto-allocate-nat-external-ips --nat-all-subnet-ip-ranges"
fi
# Membership: only the cluster's own VMs may run as its account (any VM that does is a member), and the cluster's
# VMs that exist must run as it.
members=$(ask gcloud compute instances list --filter "serviceAccounts.email=$account" \
  --format 'value(name,zone.basename())') || die "cannot list the VMs that run as $account (gcloud compute" \
  "instances list failed)"
while read -r vm zone; do
  [[ -z $vm || ($zone == "$ZONE" && " ${hosts[*]} " == *" $vm "*) ]] && continue
  die "VM $vm ($zone) runs as $account, so the cluster's firewall rules would admit it as a member: give the" \
    "cluster an account of its own (--service-account, or leave it out for $sa_id), or remove $vm, or if it is" \
    "another cluster named $NAME, choose another --name"
done <<<"$members"
declare -A status
for host in "${hosts[@]}"; do
  vm=$(ask gcloud compute instances describe "$host" --zone "$ZONE" \
    --format 'value(status,serviceAccounts[0].email)') || vm=""
  status[$host]=$(cut -f1 <<<"$vm")
  runs_as=$(cut -s -f2 <<<"$vm")
  if [[ -n ${status[$host]} && $runs_as != "$account" ]]; then
    die "VM $host exists and runs as ${runs_as:-no account}, not $account, so the firewall rules would leave it" \
      "out: run down (with the --service-account it was made with), then up"
  fi
done
# The cluster's rules: none (made), as up makes them (kept), on another network (refused: rule names are the
# project's, each rule is on one network, so it is another cluster's of the same --name, or one made with
# another --network), or else different (replaced, while no VM of the cluster runs: meanwhile it would be open
# or cut off).
declare -A existing replace
running=""
for host in "${hosts[@]}"; do
  [[ -z ${status[$host]} || ${status[$host]} == TERMINATED ]] || running+="${running:+, }$host (${status[$host]})"
done
for rule in "$grpc_rule" "$ssh_rule" "$deny_rule"; do
  if ((DRY_RUN)); then ask gcloud compute firewall-rules describe "$rule" --format "$RULE_FORMAT"; continue; fi
  have=$(describe_rule "$rule") want=$(rule_wanted "$rule")
  existing[$rule]=$have
  [[ -n $have && $have != "${want,,}" ]] || continue
  if [[ $(field "$have" network) != "${NETWORK,,}" ]]; then
    die "firewall rule $rule is on network $(field "$have" network), not $NETWORK: another cluster named $NAME" \
      "(rule names are the project's), or this one made with --network $(field "$have" network): choose another" \
      "--name, or run down with that --network first"
  fi
  if [[ -n $running ]]; then
    die "firewall rule $rule differs from what up makes ($(differences "$have" "${want,,}")) and $running runs:" \
      "replacing it would leave the cluster open or cut off meanwhile; run down, then up"
  fi
  replace[$rule]=$(differences "$have" "${want,,}")
done
exec 3>&-

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
package_archive "$work/distmnist.tar.gz"
run gcloud storage cp "$work/distmnist.tar.gz" "$BUCKET/$NAME/distmnist.tar.gz"

# Least privilege: the VMs' identity can use the bucket's objects and nothing else in the project.
if [[ -z $SERVICE_ACCOUNT ]]; then
  if exists iam service-accounts describe "$account"; then
    echo "$account: exists, kept"
  else
    run gcloud iam service-accounts create "$sa_id" --display-name "distmnist $NAME VMs (bucket only)"
  fi
fi
# IAM is eventually consistent: an account made seconds ago can be reported missing for a minute or so. Its first
# use, the bucket binding, is tried again while IAM says so, IAM_WAIT_S at most; any other error ends up at once.
bucket_root=$(cut -d/ -f1-3 <<<"$BUCKET")
binding=(gcloud storage buckets add-iam-policy-binding "$bucket_root" --member "serviceAccount:$account"
  --role roles/storage.objectAdmin)
bind_bucket() {
  local deadline=$((SECONDS + IAM_WAIT_S))
  run "${binding[@]}" 2>"$work/iam-error" && return 0
  while grep -qiE "does not exist|not found" "$work/iam-error" && ((SECONDS < deadline)); do
    sleep "$POLL_S"
    "${binding[@]}" 2>"$work/iam-error" && return 0
  done
  die "could not grant $account the bucket ($(grep -v '^[[:space:]]*$' "$work/iam-error" | tail -n 1));" \
    "IAM was given ${IAM_WAIT_S} s to know a new account: run up again"
}
bind_bucket

# Firewall (see rule_wanted): the VMs that run as the account take TCP from each other (TensorFlow's gRPC port,
# and NCCL's own connections between GPU workers) and SSH from IAP's TCP forwarding, and nothing from anywhere else.
for rule in "$grpc_rule" "$ssh_rule" "$deny_rule"; do
  if [[ -n ${replace[$rule]:-} ]]; then
    echo "$rule: differs from what up makes (${replace[$rule]}): replaced"
    run gcloud compute firewall-rules delete "$rule" --quiet
  elif [[ -n ${existing[$rule]:-} ]]; then
    echo "$rule: exists as up makes it, kept"
    continue
  fi
  make_rule "$rule"
done

echo "chief: ${hosts[0]} (worker 0 writes the run directory); $WORKERS x $MACHINE_TYPE, $ACCELERATOR_COUNT x $ACCELERATOR each"
for ((i = 0; i < WORKERS; i++)); do
  config=$(tf_config "$i" "${hosts[@]}")
  echo "TF_CONFIG[$i]: $config"
  startup_script "$i" gcp "gcloud storage cp" "gcloud storage rsync --recursive" "printf %s '$config'" >"$work/startup-$i.sh"
  echo "--- start-up script of ${hosts[$i]} ---"
  cat "$work/startup-$i.sh"
  echo "--- end ---"
  shutdown_script "$i" "gcloud storage cp" "gcloud storage rsync --recursive" >"$work/shutdown-$i.sh"
  echo "--- shutdown script of ${hosts[$i]} ---"
  cat "$work/shutdown-$i.sh"
  echo "--- end ---"
  metadata="startup-script=$work/startup-$i.sh,shutdown-script=$work/shutdown-$i.sh"
  extra=()
  if ((SPOT)); then extra+=(--provisioning-model SPOT --instance-termination-action STOP); fi
  case ${status[${hosts[$i]}]} in
    "")
      run gcloud compute instances create "${hosts[$i]}" --zone "$ZONE" --machine-type "$MACHINE_TYPE" \
        ${accelerator_flags[@]+"${accelerator_flags[@]}"} --maintenance-policy TERMINATE \
        --image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT" --boot-disk-size 100GB \
        --network "$NETWORK" --subnet "$SUBNET" --no-address \
        --service-account "$account" --scopes storage-rw \
        --metadata install-nvidia-driver=True --metadata-from-file "$metadata" \
        ${extra[@]+"${extra[@]}"}
      ;;
    TERMINATED)  # stopped (its run done, or preempted): the new scripts, then started again; the chief resumes
      run gcloud compute instances add-metadata "${hosts[$i]}" --zone "$ZONE" --metadata-from-file "$metadata"
      run gcloud compute instances start "${hosts[$i]}" --zone "$ZONE"
      ;;
    *) echo "${hosts[$i]}: ${status[${hosts[$i]}]}, kept (down, then up, to start it afresh)" ;;
  esac
done
echo "the chief's run lands in $BUCKET/$NAME/run; follow a VM with:"
echo "  gcloud compute ssh ${hosts[0]} --zone $ZONE --tunnel-through-iap -- tail -f /var/log/distmnist.log"
echo "then remove everything with: $0 down --name $NAME --workers $WORKERS --zone $ZONE --network $NETWORK" \
  "${SERVICE_ACCOUNT:+--service-account $SERVICE_ACCOUNT}"

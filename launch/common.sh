# shellcheck shell=bash
# Shared by gcp.sh and aws.sh: options, TF_CONFIGs, the start-up script, and --dry-run. Sourced, not run.
# shellcheck source-path=SCRIPTDIR source=options.sh
source "$(dirname "${BASH_SOURCE[0]}")/options.sh"

GRPC_PORT=${DISTMNIST_PORT:-2222}
NAME=${DISTMNIST_NAME:-distmnist}
WORKERS=${DISTMNIST_WORKERS:-2}
BUCKET=${DISTMNIST_BUCKET:-}
DRY_RUN=0
ACTION=""
TRAIN_FLAGS=()

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# Prints a cloud command; runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((DRY_RUN)); then return 0; fi
  "$@"
}

# tf_config INDEX HOST... : worker INDEX's TF_CONFIG (worker 0 is the chief: it alone writes the run).
tf_config() {
  local index=$1 list="" host
  shift
  for host in "$@"; do list+="${list:+, }\"$host:$GRPC_PORT\""; done
  printf '{"cluster": {"worker": [%s]}, "task": {"type": "worker", "index": %d}}' "$list" "$index"
}

check_common() {
  [[ -n $ACTION ]] || die "say up or down (see --help)"
  [[ $ACTION == up || $ACTION == down ]] || die "unknown action '$ACTION' (up or down)"
  [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$WORKERS'"
  [[ $NAME =~ ^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$ ]] || die "--name must be lower-case letters, digits and dashes"
  local flag
  for flag in ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"}; do
    if train_flag_sets "$flag" logdir run_name; then
      die "$flag is set by $(basename "$0") (the chief's run directory, mirrored to the bucket, is named by --name)"
    fi
  done
  if [[ $ACTION == up ]]; then
    [[ -n $BUCKET ]] || die "--bucket is required for up (where the package goes and the chief's run lands)"
  fi
}

# The source the VMs install: this checkout's committed tree, as an archive. A dry run makes it too (here, not in
# the cloud), so that it says which commit would run; the VMs read the commit back from the archive itself (git
# archive writes it in the tar's pax header), and its sha256 decides whether they install it.
package_archive() {
  local out=$1 repo
  repo="$(dirname "$0")/.."
  printf '+'
  printf ' %q' git -C "$repo" archive --format=tar.gz --prefix=distmnist/ -o "$out" HEAD
  printf '\n'
  git -C "$repo" archive --format=tar.gz --prefix=distmnist/ -o "$out" HEAD ||
    die "git archive failed: up deploys this checkout's committed tree, so it must be a git checkout"
  echo "source: commit $(git -C "$repo" rev-parse HEAD), archive sha256 $(sha256sum "$out" | cut -d' ' -f1)"
  if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
    echo "note: this checkout has uncommitted changes; the VMs get the commit above, without them"
  fi
}

# startup_script INDEX CLOUD FETCH_CMD SYNC_CMD TF_CONFIG_SHELL : the script each VM runs at boot.
# FETCH_CMD SRC DST copies a file from or to the bucket, SYNC_CMD SRC DST mirrors a folder to or from it;
# TF_CONFIG_SHELL is shell that prints this worker's TF_CONFIG. No credentials: the VM's own identity (service
# account, instance profile) grants the bucket. On AWS the script also installs the systemd unit that saves the
# run on the way down (GCE runs gcp.sh's shutdown script itself).
startup_script() {
  local index=$1 cloud=$2 fetch=$3 sync=$4 tf_config_shell=$5 flags="" run_dir="/opt/distmnist/logs/$NAME"
  local resume="" mirror="" save_run_setup="" save_run="" save_unit=""
  if ((${#TRAIN_FLAGS[@]})); then flags=$(printf ' %q' "${TRAIN_FLAGS[@]}"); fi
  if ((index == 0)); then  # the chief: it alone holds the run directory and its checkpoints
    resume="if [ ! -d $run_dir ]; then  # an earlier VM's run in the bucket: resume it here
  mkdir -p $run_dir && $sync $BUCKET/$NAME/run $run_dir
  [ -f $run_dir/run_config.json ] || rm -rf $run_dir
fi"
    mirror="[ -d $run_dir ] && $sync $run_dir $BUCKET/$NAME/run"
    save_run_setup="  local synced=-\$every stamp=/opt/distmnist/saved-at
  touch -d @0 \$stamp"
    save_run="    if [ \$((SECONDS - synced)) -ge \"\$every\" ] &&
      [ -n \"\$(find $run_dir/checkpoints -newer \$stamp -print -quit 2>/dev/null)\" ]; then
      synced=\$SECONDS
      touch \$stamp
      $sync $run_dir $BUCKET/$NAME/run >/dev/null 2>&1
    fi"
  fi
  if [[ $cloud == aws ]]; then
    save_unit="# On the way down (aws.sh down, a terminated or interrupted instance, the end of the run), before the
# network goes: systemd stops units in the reverse order of their start, so a unit ordered after
# network-online.target runs its ExecStop while the network is still up. EC2 terminates with a graceful OS shutdown
# (unless told --skip-os-shutdown or --force), and a Spot instance has had its two minutes' notice by then;
# TimeoutStopSec bounds the save within both.
cat >/opt/distmnist/on-shutdown.sh <<'SAVE'
$(shutdown_script "$index" "$fetch" "$sync")
SAVE
cat >/etc/systemd/system/distmnist-save.service <<'UNIT'
[Unit]
Description=distmnist worker $index of cluster $NAME: save the run and the log to the bucket on the way down
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/bash /opt/distmnist/on-shutdown.sh
TimeoutStopSec=90
UNIT
systemctl daemon-reload && systemctl start distmnist-save.service || exit 1"
  fi
  cat <<SCRIPT
#!/bin/bash
# distmnist worker $index of $WORKERS, cluster '$NAME' (generated by launch/$(basename "$0")).
# Installs distmnist[gpu] (the archive in the bucket, when it is not the one installed), fetches MNIST, trains,
# and the chief mirrors its run to $BUCKET/$NAME/run: after each checkpoint (every DISTMNIST_SYNC_S, 300 s, at
# most), at the end, and on the way down; then the VM shuts down. A preemption notice becomes SIGTERM
# (launch/preemption_watch.sh): every worker stops at the same step, the chief checkpoints and mirrors the run.
# Started again (a stopped VM restarted, or new VMs from the same 'up'), the chief resumes from that checkpoint,
# on its disk or from the bucket.
set -uxo pipefail
# The log goes to /var/log/distmnist.log and, through the start-up script's own output, to the serial console
# (GCP: gcloud compute instances get-serial-port-output; AWS: aws ec2 get-console-output), and to the bucket
# ($BUCKET/$NAME/startup-$index.log) as it grows, at the end and on the way down.
exec > >(tee -a /var/log/distmnist.log) 2>&1
# shellcheck disable=SC2317,SC2329  # run by the EXIT trap (unreachable to ShellCheck 0.9, unused to later ones)
finish() {
  local status=\$?
  if [ "\$status" -ne 0 ]; then
    echo "distmnist: worker $index ended with status \$status; its log goes to $BUCKET/$NAME/startup-$index.log"
  fi
  $fetch /var/log/distmnist.log $BUCKET/$NAME/startup-$index.log
  shutdown -h now
}
trap finish EXIT
# A venv on a Python that TensorFlow 2.21 has wheels for (3.10-3.13): the image's python3 if it is one, else
# another python3.X on the image; Ubuntu's python3 needs its -venv package for venv (installed when missing).
make_venv() {
  local py="" candidate
  for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "\$candidate" >/dev/null &&
      "\$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))'; then
      py=\$candidate; break
    fi
  done
  if [ -z "\$py" ]; then
    echo "distmnist: no Python 3.10-3.13 on this image (python3 is \$(python3 --version 2>&1)); choose another image"
    return 1
  fi
  if "\$py" -m venv venv; then return 0; fi
  rm -rf venv
  version=\$("\$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # On first boot the image's own updates can hold dpkg's lock: wait for it (10 minutes at most).
  if ! { apt-get -o DPkg::Lock::Timeout=600 update -q &&
    apt-get -o DPkg::Lock::Timeout=600 install -y -q "python\$version-venv" && "\$py" -m venv venv; }; then
    echo "distmnist: \$py -m venv fails and python\$version-venv could not be installed"
    return 1
  fi
}
mkdir -p /opt/distmnist && cd /opt/distmnist || exit 1
$save_unit
# What runs is what up uploaded last: the archive is fetched on every boot and installed when its sha256 is not
# the installed one's (a VM started again by a later up runs that up's code).
$fetch $BUCKET/$NAME/distmnist.tar.gz distmnist.tar.gz || exit 1
archive_sha256=\$(sha256sum distmnist.tar.gz | cut -d' ' -f1)
if [ "\$(cat installed-sha256 2>/dev/null)" != "\$archive_sha256" ]; then
  rm -f installed-sha256
  tar -xzf distmnist.tar.gz distmnist/launch/preemption_watch.sh || exit 1
  if [ ! -x venv/bin/python ]; then
    make_venv || exit 1
    venv/bin/pip install --upgrade pip || exit 1
  fi
  # pip may keep an installed distmnist of the same version: the old one goes first.
  venv/bin/pip uninstall -y distmnist
  venv/bin/pip install "distmnist[gpu] @ file:///opt/distmnist/distmnist.tar.gz" || exit 1
  echo "\$archive_sha256" >installed-sha256
fi
# Which code runs, here and in the run's run.json: the commit git archive wrote in the archive, and its sha256.
DISTMNIST_SOURCE_COMMIT=\$(venv/bin/python -c 'import sys, tarfile
print(tarfile.open(sys.argv[1]).pax_headers.get("comment", "unknown"))' distmnist.tar.gz)
export DISTMNIST_SOURCE_COMMIT DISTMNIST_SOURCE_SHA256=\$archive_sha256
echo "distmnist: running commit \$DISTMNIST_SOURCE_COMMIT (archive sha256 \$archive_sha256)"
# The image installs the NVIDIA driver on first boot: wait for it (10 minutes at most), then make sure
# TensorFlow can use the GPUs. A VM whose GPUs are not usable stops here with the doctor's report (in this log
# and in the bucket) instead of training on its CPU.
for _ in \$(seq 60); do nvidia-smi -L >/dev/null 2>&1 && break; sleep 10; done
venv/bin/python -m distmnist.doctor --smoke_steps=50 >doctor.txt 2>&1
doctor=\$?
cat doctor.txt
$fetch doctor.txt $BUCKET/$NAME/doctor-$index.txt
if [ \$doctor -ne 0 ] || ! grep -q "can train on its GPUs" doctor.txt; then
  echo "distmnist: this VM's GPUs are not usable (doctor.txt above, and $BUCKET/$NAME/doctor-$index.txt); not training"
  exit 1
fi
venv/bin/python -m distmnist.data || exit 1
TF_CONFIG=\$($tf_config_shell) || exit 1
export TF_CONFIG
echo "TF_CONFIG=\$TF_CONFIG"
$resume
venv/bin/python -m distmnist.train --logdir=/opt/distmnist/logs --run_name=$NAME --require_gpus$flags &
train=\$!
distmnist/launch/preemption_watch.sh $cloud \$train &
watch=\$!
# While it trains: this worker's log to the bucket, and the chief's run directory after each new checkpoint,
# every DISTMNIST_SYNC_S at most. What a VM lost without warning (a host failure) takes with it is what came
# after that; a checkpoint caught half-copied is passed over when the run resumes (the one before it is read).
# shellcheck disable=SC2317,SC2329  # run in the background below (as above)
save_loop() {
  local every=\${DISTMNIST_SYNC_S:-300}
  local logged=-\$every
$save_run_setup
  while sleep "\${DISTMNIST_POLL_S:-5}"; do
    if [ \$((SECONDS - logged)) -ge "\$every" ]; then
      logged=\$SECONDS
      $fetch /var/log/distmnist.log $BUCKET/$NAME/startup-$index.log >/dev/null 2>&1
    fi
$save_run
  done
}
save_loop &
saver=\$!
wait \$train
status=\$?
kill \$watch \$saver 2>/dev/null
$mirror
echo "distmnist.train exited with \$status (143: stopped by a preemption notice, with a checkpoint)"
exit \$status
SCRIPT
}

# shutdown_script INDEX FETCH_CMD SYNC_CMD : what a VM runs on the way down (GCE runs it as the shutdown script on
# a stop, a deletion or a preemption, which gives about 30 s; on AWS the start-up script's systemd unit runs it):
# stop training with a checkpoint (as a preemption notice does; every worker stops at the same step, the chief
# saves), then the chief mirrors the run to the bucket, and every worker copies its log there. The start-up
# script's own mirror may not get to run once the VM is going down.
shutdown_script() {
  local index=$1 fetch=$2 sync=$3 run_dir="/opt/distmnist/logs/$NAME" mirror=""
  if ((index == 0)); then
    mirror="if [ -d $run_dir ]; then
  $sync $run_dir $BUCKET/$NAME/run
  echo \"shutdown: \$(date -u +%T) mirroring the run to $BUCKET/$NAME/run ended with status \$?\"
fi"
  fi
  cat <<SCRIPT
#!/bin/bash
# distmnist worker $index of cluster '$NAME' (generated by launch/$(basename "$0")): save the run on the way down.
exec >>/var/log/distmnist.log 2>&1
echo "shutdown: \$(date -u +%T) stopping distmnist.train with a checkpoint"
pkill -TERM -f 'distmnist[.]train .*--run_name=$NAME' || true
for _ in \$(seq 40); do pgrep -f 'distmnist[.]train .*--run_name=$NAME' >/dev/null || break; sleep 0.5; done
$mirror
$fetch /var/log/distmnist.log $BUCKET/$NAME/startup-$index.log
SCRIPT
}

common_help() {
  cat <<'HELP'
common options (environment variable in brackets):
  --name NAME           cluster name, prefix of every resource [DISTMNIST_NAME, distmnist]
  --workers N           number of VMs, one worker each [DISTMNIST_WORKERS, 2]
  --bucket URL          where the package goes and the chief's run directory lands [DISTMNIST_BUCKET]
  --dry-run             print every cloud command, the start-up scripts and TF_CONFIGs; run nothing in the
                        cloud (the archive of this checkout is made here, to say which commit would run)
  -- FLAGS...           flags for python -m distmnist.train (e.g. -- --epochs=20)
HELP
}

# parse_common "$@": the common options and the cloud's own (VALUE_OPTIONS, SWITCH_OPTIONS set by the script
# before), in either form (--opt value, --opt=value); the action is the one word that is not an option.
parse_common() {
  VALUE_OPTIONS+=(--name:NAME --workers:WORKERS --bucket:BUCKET)
  SWITCH_OPTIONS+=(--dry-run:DRY_RUN)
  parse_options "$@"
  [[ ${#WORDS[@]} -le 1 ]] || die "one action, up or down, got '${WORDS[*]}'"
  ACTION=${WORDS[0]:-}
}

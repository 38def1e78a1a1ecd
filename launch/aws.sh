#!/usr/bin/env bash
# Train distmnist on N GPU instances on AWS EC2, one MultiWorkerMirroredStrategy worker each.
#
#   launch/aws.sh up --bucket s3://my-bucket --subnet subnet-0abc --instance-profile distmnist-vm -- --epochs=20
#   launch/aws.sh down
#   launch/aws.sh up --bucket s3://my-bucket --subnet subnet-0abc --dry-run   # print everything, run nothing
#
# `up` uploads this checkout (git archive HEAD) to the bucket, creates a security group that admits TCP (gRPC,
# NCCL) from its own members only, and launches the instances in a private subnet (no public address, IMDSv2
# required). Private addresses are known only after launch, so `up` then writes the cluster to
# s3://BUCKET/NAME/cluster.json, which each instance's start-up script waits for to build its TF_CONFIG. Each
# instance installs distmnist[gpu], fetches MNIST, trains; the chief copies its run directory to
# s3://BUCKET/NAME/run after each checkpoint (every 5 minutes at most), at the end and, through a systemd
# unit, on the way down (aws.sh down, a Spot interruption, any termination with an OS shutdown), every instance
# its log; every instance then shuts down (and terminates). `down` terminates the instances (each saves its part
# on the way down) and deletes the security group, past whatever is already gone. Needs the aws CLI, a subnet
# with a NAT gateway (pip reaches PyPI through it) and an instance profile that can use the bucket and nothing
# else (docs/cloud.md has the policy): no credentials in this script or on the instances.
# TensorFlow's gRPC servers run any graph sent to them: never open GRPC_PORT beyond the cluster.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

REGION=${AWS_REGION:-us-east-1}
INSTANCE_TYPE=${AWS_INSTANCE_TYPE:-g5.xlarge}
AMI=${AWS_AMI:-resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id}
SUBNET=${AWS_SUBNET:-}
INSTANCE_PROFILE=${AWS_INSTANCE_PROFILE:-}
SPOT=${AWS_SPOT:-0}

help() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  common_help
  cat <<'HELP'
AWS options:
  --region REGION            [AWS_REGION, us-east-1]
  --instance-type TYPE       [AWS_INSTANCE_TYPE, g5.xlarge: one A10G]
  --ami AMI                  [AWS_AMI, the Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) via SSM]
  --subnet SUBNET            private subnet, required for up [AWS_SUBNET]
  --instance-profile NAME    the instances' identity, required for up [AWS_INSTANCE_PROFILE]
  --spot                     Spot instances (cheaper, can be reclaimed) [AWS_SPOT=1]
TensorBoard, never on a public interface (through SSM, no open port):
  aws ssm start-session --target INSTANCE_ID --document-name AWS-StartPortForwardingSession \
    --parameters portNumber=6006,localPortNumber=6006
  with '/opt/distmnist/venv/bin/tensorboard --logdir /opt/distmnist/logs --host 127.0.0.1' running there
  (or ssh -L 6006:127.0.0.1:6006 through a bastion); then open http://127.0.0.1:6006 here.
HELP
}

VALUE_OPTIONS=(--region:REGION --instance-type:INSTANCE_TYPE --ami:AMI --subnet:SUBNET
  --instance-profile:INSTANCE_PROFILE)
SWITCH_OPTIONS=(--spot:SPOT)
parse_common "$@"
check_common
group_name="$NAME-grpc"

if [[ $ACTION == down ]]; then
  if ((DRY_RUN)); then
    ids="<instances tagged distmnist-cluster=$NAME>"
    group="<security group $group_name>"
  else
    ids=$(aws ec2 describe-instances --region "$REGION" --filters "Name=tag:distmnist-cluster,Values=$NAME" \
      "Name=instance-state-name,Values=pending,running,stopping,stopped" \
      --query 'Reservations[].Instances[].InstanceId' --output text) ||
      die "cannot list the instances (aws ec2 describe-instances failed)"
    group=$(aws ec2 describe-security-groups --region "$REGION" --filters "Name=group-name,Values=$group_name" \
      --query 'SecurityGroups[0].GroupId' --output text) || group=""
  fi
  # Each piece on its own, past whatever is already gone; the status says whether anything could not be removed.
  failed=()
  if [[ -n $ids && $ids != None ]]; then
    # shellcheck disable=SC2086  # several instance ids
    run aws ec2 terminate-instances --region "$REGION" --instance-ids $ids || failed+=("instances $ids")
    # shellcheck disable=SC2086
    run aws ec2 wait instance-terminated --region "$REGION" --instance-ids $ids || failed+=("instances $ids")
  else
    echo "instances of $NAME: already gone"
  fi
  if [[ -n $group && $group != None ]]; then
    run aws ec2 delete-security-group --region "$REGION" --group-id "$group" || failed+=("security group $group")
  else
    echo "security group $group_name: already gone"
  fi
  # The cluster's addresses: stale once its instances are gone (an up that found it would build a wrong TF_CONFIG).
  if [[ -n $BUCKET ]]; then
    run aws s3 rm "$BUCKET/$NAME/cluster.json" || failed+=("$BUCKET/$NAME/cluster.json")
  else
    echo "no --bucket: $NAME's cluster.json, if any, stays in its bucket (up removes it before it starts again)"
  fi
  if ((${#failed[@]})); then die "could not remove: ${failed[*]} (see above); run down again or remove them by hand"; fi
  exit 0
fi

[[ $BUCKET == s3://* ]] || die "--bucket must be an s3:// URL, got '$BUCKET'"
[[ -n $SUBNET ]] || die "--subnet is required for up: a private subnet with a NAT gateway"
[[ -n $INSTANCE_PROFILE ]] || die "--instance-profile is required for up: it lets the instances use the bucket"

# A cluster whose instances are all still there is up already; one with some of them left is half a cluster,
# whose TF_CONFIG the new ones could not share: down first.
cluster_instances() {
  aws ec2 describe-instances --region "$REGION" --filters "Name=tag:distmnist-cluster,Values=$NAME" \
    "Name=instance-state-name,Values=pending,running,stopping,stopped" \
    --query 'Reservations[].Instances[].InstanceId' --output text
}
if ((!DRY_RUN)); then
  existing=$(cluster_instances) || die "cannot list the instances (aws ec2 describe-instances failed)"
  read -r -a existing <<<"${existing//None/}"
  if ((${#existing[@]} == WORKERS)); then
    echo "cluster $NAME is up already: ${existing[*]}; nothing to do (down, then up, to start it afresh)"
    exit 0
  elif ((${#existing[@]})); then
    die "cluster $NAME has ${#existing[@]} of its $WORKERS instances left (${existing[*]}): run down, then up"
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
package_archive "$work/distmnist.tar.gz"
run aws s3 cp "$work/distmnist.tar.gz" "$BUCKET/$NAME/distmnist.tar.gz"
# An earlier cluster's addresses must not reach the new instances, which wait for this file.
run aws s3 rm "$BUCKET/$NAME/cluster.json"

group=""
if ((DRY_RUN)); then
  vpc="<vpc of $SUBNET>"
else
  vpc=$(aws ec2 describe-subnets --region "$REGION" --subnet-ids "$SUBNET" --query 'Subnets[0].VpcId' --output text) ||
    die "cannot find subnet $SUBNET in $REGION (aws ec2 describe-subnets failed)"
  group=$(aws ec2 describe-security-groups --region "$REGION" --filters "Name=group-name,Values=$group_name" \
    "Name=vpc-id,Values=$vpc" --query 'SecurityGroups[0].GroupId' --output text) || group=""
  [[ $group != None ]] || group=""
fi
if [[ -n $group ]]; then
  echo "security group $group_name ($group): exists, kept"
else
  run aws ec2 create-security-group --region "$REGION" --vpc-id "$vpc" --group-name "$group_name" \
    --description "distmnist $NAME: TCP between cluster members only"
  if ((DRY_RUN)); then
    group="<new security group $group_name>"
  else
    group=$(aws ec2 describe-security-groups --region "$REGION" --filters "Name=group-name,Values=$group_name" \
      "Name=vpc-id,Values=$vpc" --query 'SecurityGroups[0].GroupId' --output text)
  fi
fi
# TCP only from members of the same group: TensorFlow's gRPC servers (port GRPC_PORT) must not be reachable from
# elsewhere, and NCCL (GPU workers) opens its own TCP connections between the same instances.
rule=""
if ((!DRY_RUN)); then
  rule=$(aws ec2 describe-security-group-rules --region "$REGION" --filters "Name=group-id,Values=$group" \
    --query "SecurityGroupRules[?!IsEgress && ReferencedGroupInfo.GroupId=='$group'].SecurityGroupRuleId" \
    --output text) || rule=""
  [[ $rule != None ]] || rule=""
fi
if [[ -n $rule ]]; then
  echo "its rule admitting the group's own members ($rule): exists, kept"
else
  run aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$group" --protocol tcp \
    --port 0-65535 --source-group "$group"
fi

# Each instance waits (up to 15 minutes) for cluster.json, then takes its own place in it.
wait_for_cluster="for _ in \$(seq 180); do if aws s3 cp $BUCKET/$NAME/cluster.json /opt/distmnist/cluster.json \
>/dev/null 2>&1; then break; fi; sleep 5; done; python3 -c 'import json,sys; c=json.load(open(\"/opt/distmnist/\
cluster.json\")); c[\"task\"]={\"type\":\"worker\",\"index\":int(sys.argv[1])}; print(json.dumps(c))'"
market=()
if ((SPOT)); then market=(--instance-market-options "MarketType=spot,SpotOptions={SpotInstanceType=one-time}"); fi
echo "chief: $NAME-0 (worker 0 writes the run directory)"
ids=()
for ((i = 0; i < WORKERS; i++)); do
  startup_script "$i" aws "aws s3 cp" "aws s3 sync" "$wait_for_cluster $i" >"$work/startup-$i.sh"
  echo "--- start-up script of $NAME-$i ---"
  cat "$work/startup-$i.sh"
  echo "--- end ---"
  launch=(aws ec2 run-instances --region "$REGION" --image-id "$AMI" --instance-type "$INSTANCE_TYPE" --count 1
    --subnet-id "$SUBNET" --no-associate-public-ip-address --security-group-ids "$group"
    --iam-instance-profile "Name=$INSTANCE_PROFILE" --instance-initiated-shutdown-behavior terminate
    --metadata-options "HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=1"
    --block-device-mappings 'DeviceName=/dev/sda1,Ebs={VolumeSize=100,VolumeType=gp3}'
    --tag-specifications "ResourceType=instance,Tags=[{Key=distmnist-cluster,Value=$NAME},{Key=Name,Value=$NAME-$i}]"
    --user-data "file://$work/startup-$i.sh" ${market[@]+"${market[@]}"}
    --query 'Instances[0].InstanceId' --output text)
  printf '+'
  printf ' %q' "${launch[@]}"
  printf '\n'
  if ((DRY_RUN)); then
    ids+=("<id-of-$NAME-$i>")
  else  # its answer is the instance's id alone
    ids+=("$("${launch[@]}")") || die "run-instances failed for $NAME-$i; remove what was made with: $0 down"
  fi
done

hosts=()
if ((DRY_RUN)); then
  for ((i = 0; i < WORKERS; i++)); do hosts+=("<private-ip-of-$NAME-$i>"); done
else
  run aws ec2 wait instance-running --region "$REGION" --instance-ids "${ids[@]}"
  for id in "${ids[@]}"; do
    hosts+=("$(aws ec2 describe-instances --region "$REGION" --instance-ids "$id" \
      --query 'Reservations[0].Instances[0].PrivateIpAddress' --output text)")
  done
fi
for ((i = 0; i < WORKERS; i++)); do echo "TF_CONFIG[$i]: $(tf_config "$i" "${hosts[@]}")"; done
tf_config 0 "${hosts[@]}" | python3 -c 'import json,sys; c=json.load(sys.stdin); del c["task"]; print(json.dumps(c))' \
  >"$work/cluster.json"
run aws s3 cp "$work/cluster.json" "$BUCKET/$NAME/cluster.json"
echo "the chief's run lands in $BUCKET/$NAME/run; remove everything with: $0 down --name $NAME --region $REGION"

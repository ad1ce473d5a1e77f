#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice, or queue a request for one (--queued).
#
#   tpu/create.sh --name=NAME --zone=ZONE --accelerator-type=TYPE [options] [-- GCLOUD_FLAGS]
#
#   --accelerator-type  v5litepod-8 (v5e, one host), v5p-128 (v5p, 16 hosts), v6e-8, v4-32, ...
#   --version           TPU software version; default from the type: v5litepod-* v2-alpha-tpuv5-lite,
#                       v5p-* v2-alpha-tpuv5, v6e-* v2-alpha-tpuv6e, v2/v3/v4 tpu-ubuntu2204-base
#   --queued            request it as a queued resource (waits for capacity; the node gets --name)
#   --spot              Spot capacity: cheaper, may be preempted at any time
#   --preemptible       legacy preemptible TPU VM (not with --queued: use --spot)
#   --project           Google Cloud project (default: gcloud's configured one)
#   --dry-run           print the gcloud command instead of running it
# Arguments after `--` go to gcloud unchanged (e.g. -- --network=NET --valid-until-duration=6h).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

ACCELERATOR_TYPE=""
VERSION=""
QUEUED=""
SPOT=""
PREEMPTIBLE=""
FLAGS="accelerator-type version"
SWITCHES="queued spot preemptible"
parse_args "$@"
require name zone accelerator-type

if [[ -z $VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "no default --version for --accelerator-type=$ACCELERATOR_TYPE; pass --version" ;;
  esac
fi
if [[ -n $SPOT && -n $PREEMPTIBLE ]]; then
  die "--spot and --preemptible exclude each other; pick one"
fi

if [[ -n $QUEUED ]]; then
  if [[ -n $PREEMPTIBLE ]]; then
    die "--preemptible does not apply to --queued; use --spot"
  fi
  run gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" "${LOCATION[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$VERSION" ${SPOT:+--spot} \
    ${EXTRA[@]+"${EXTRA[@]}"}
  if [[ -z $DRY_RUN ]]; then
    echo "queued; it is ready when its state is ACTIVE:" >&2
    quote gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" >&2
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$VERSION" ${SPOT:+--spot} \
    ${PREEMPTIBLE:+--preemptible} ${EXTRA[@]+"${EXTRA[@]}"}
fi

#!/usr/bin/env bash
# Delete a TPU VM, or a queued resource together with its TPU VM (--queued). What is on the
# workers' disks is lost; the workdir (gs://) keeps the checkpoints.
#
#   tpu/delete.sh --name=NAME --zone=ZONE [--queued] [--yes] [options]
#
#   --queued   it was made with tpu/create.sh --queued: delete the queued resource (--force
#              deletes its TPU VM first)
#   --yes      do not ask for confirmation (gcloud --quiet)
#   --project  Google Cloud project (default: gcloud's configured one)
#   --dry-run  print the gcloud command instead of running it

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

QUEUED=""
YES=""
SWITCHES="queued yes"
parse_args "$@"
require name zone

if [[ -n $QUEUED ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force ${YES:+--quiet}
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" ${YES:+--quiet}
fi

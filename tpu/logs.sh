#!/usr/bin/env bash
# Show the main job's log of one worker, or of all of them, and follow it (Ctrl-C to leave;
# the job goes on).
#
#   tpu/logs.sh --name=NAME --zone=ZONE [--worker=0|N|all] [--tail=100] [--no-follow]
#
#   --worker     worker number (default 0, the one that prints progress and metrics) or all;
#                with all, each line starts with the worker's hostname
#   --tail       how many lines to show first (default 100)
#   --no-follow  print and return instead of following
#   --dir        where tpu/setup.sh put the code, under the home directory (default jaxpretrain)
#   --project    Google Cloud project (default: gcloud's configured one)
#   --dry-run    print the gcloud command instead of running it

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

WORKER=0
TAIL=100
NO_FOLLOW=""
FLAGS="worker tail dir"
SWITCHES="no-follow"
parse_args "$@"
require name zone worker tail dir

command="tail -n $(quote "$TAIL")"
if [[ -z $NO_FOLLOW ]]; then
  command+=" -F"
fi
command+=" $(quote "$DIR/logs/main.log")"
if [[ $WORKER == all ]]; then
  # Expanded on the worker, not here.
  # shellcheck disable=SC2016
  command+=' | sed -u "s/^/$(hostname): /"'
fi
on_workers "$command"

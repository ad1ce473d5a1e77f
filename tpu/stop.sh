#!/usr/bin/env bash
# Stop the main job on every worker: SIGTERM, which makes it save a checkpoint at the next step
# and exit 0 (docs/recovery.md), then wait until it has exited (Ctrl-C stops the waiting, not the
# job). Rerun the same tpu/launch.sh to resume.
#
#   tpu/stop.sh --name=NAME --zone=ZONE [--force] [options]
#
#   --force    SIGKILL instead: stop at once, without saving (the run resumes from the last
#              checkpoint it had written)
#   --dir      where tpu/setup.sh put the code, under the home directory (default jaxpretrain)
#   --worker   all (default) or one worker number
#   --project  Google Cloud project (default: gcloud's configured one)
#   --dry-run  print the gcloud command instead of running it

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

FORCE=""
FLAGS="dir worker"
SWITCHES="force"
parse_args "$@"
require name zone dir

signal=TERM
if [[ -n $FORCE ]]; then
  signal=KILL
fi
# Expanded on the worker, not here.
# shellcheck disable=SC2016
{
  pid='pid=$(cat logs/main.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null'
  idle='echo "$(hostname): no job running"; exit 0'
  wait='while kill -0 "$pid" 2>/dev/null; do sleep 1; done; echo "$(hostname): stopped"'
}
on_workers "cd $(quote "$DIR") && $pid || { $idle; }; kill -$signal \"\$pid\"; \
echo \"\$(hostname): sent SIG$signal to \$pid, waiting for it to exit\"; $wait"

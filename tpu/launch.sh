#!/usr/bin/env bash
# Start the main job on every worker of a TPU VM, in the background; tpu/logs.sh shows its log.
#
#   tpu/launch.sh --name=NAME --zone=ZONE --config=CONFIG --workdir=gs://BUCKET/RUN \
#       [--config.KEY=VALUE ...] [options] [-- MAIN_FLAGS]
#
# Each worker runs, in ~/DIR (see tpu/setup.sh):
#   nohup .venv/bin/python -m jaxpretrain.main --config=CONFIG --workdir=WORKDIR [overrides]
# appending its output to DIR/logs/main.log on its own disk and its process id to
# DIR/logs/main.pid. A worker whose job is still running refuses to start a second one.
# JAX_COORDINATOR_ADDRESS is set to worker 0's address (from the TPU VM metadata), so that
# jaxpretrain.main calls jax.distributed.initialize(), which finds the process count and id
# from the metadata itself. Rerunning the same launch resumes from the workdir's last checkpoint.
#
#   --config          config file, relative to DIR (e.g. configs/clm_7b.py)
#   --workdir         run directory; on a slice of several hosts a gs:// path every host can write
#   --config.KEY=VAL  config overrides, passed through (as are the MAIN_FLAGS after `--`,
#                     e.g. -- --mode=eval)
#   --dir             where tpu/setup.sh put the code, under the home directory (default jaxpretrain)
#   --worker          all (default) or one worker number
#   --project         Google Cloud project (default: gcloud's configured one)
#   --dry-run         print the gcloud command instead of running it

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

CONFIG=""
WORKDIR=""
FLAGS="config workdir dir worker"
PASS_PREFIX="--config."
parse_args "$@"
require name zone config workdir dir

main=$(quote .venv/bin/python -m jaxpretrain.main "--config=$CONFIG" "--workdir=$WORKDIR" \
  ${EXTRA[@]+"${EXTRA[@]}"})
# Expanded on the worker, not here. The metadata lists the workers, worker 0 first, as
# hostnames or name:id:ip; 8476 is the coordinator port JAX uses on Cloud TPU.
# shellcheck disable=SC2016
{
  endpoints="curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"
  coordinator="\$($endpoints | cut -d, -f1 | awk -F: '{print \$NF}'):8476"
  running='kill -0 "$(cat logs/main.pid 2>/dev/null)" 2>/dev/null'
  refuse='echo "$(hostname): a job is running (logs/main.pid); stop it first: tpu/stop.sh" >&2; exit 1'
  start='>>logs/main.log 2>&1 </dev/null & echo $! >logs/main.pid'
}
on_workers "set -e; cd $(quote "$DIR"); mkdir -p logs; if $running; then $refuse; fi; \
export JAX_COORDINATOR_ADDRESS=\"$coordinator\"; nohup $main $start"

# shellcheck shell=bash disable=SC2034 # (variables here are read by the scripts that source it)
# Sourced by every tpu/*.sh script, never run: flag parsing, the --dry-run runner, defaults.
#
# A script sets its defaults (one shell variable per flag: --accelerator-type -> ACCELERATOR_TYPE),
# lists its flags in FLAGS (take a value) and SWITCHES (take none), then calls
# `parse_args "$@"` and `require NAME...`. Every gcloud call goes through `run`, which prints
# the command shell-quoted instead of running it under --dry-run.
# Meant for bash 3.2 (macOS) and later: no associative arrays, empty arrays guarded (tested on 5.x).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SCRIPT="tpu/$(basename "$0")"

# Flags every script takes.
NAME=""    # the TPU VM (and queued resource) name
ZONE=""    # e.g. us-central1-a
PROJECT="" # empty: gcloud's configured project
DRY_RUN=""
EXTRA=()   # arguments after `--` (and launch.sh's --config.KEY=VALUE overrides)
PASS_PREFIX="" # flags starting with this go to EXTRA as they are (launch.sh: --config.)

# Where the code lives on every worker, relative to the login user's home directory.
DIR="jaxpretrain"
WORKER="all" # which workers `on_workers` reaches: all, or one number (0 = the first host)

die() {
  echo "error: $*" >&2
  exit 2
}

# The help of a script is its opening comment block.
usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

# quote ARG...: the arguments shell-quoted (as Python's shlex.quote) and joined by spaces, so the
# line can be pasted into a shell or sent as a remote command.
quote() {
  local arg out="" sq="'\"'\"'"
  for arg in "$@"; do
    if [[ -z $arg || $arg == *[!A-Za-z0-9_@%+=:,./-]* ]]; then
      arg="'${arg//\'/$sq}'"
    fi
    out+="${out:+ }$arg"
  done
  printf '%s\n' "$out"
}

# run CMD ARG...: run it, or print it under --dry-run.
run() {
  if [[ -n $DRY_RUN ]]; then
    quote "$@"
  else
    "$@"
  fi
}

_var() { # --accelerator-type -> ACCELERATOR_TYPE
  local name=${1#--}
  printf '%s' "${name//-/_}" | tr '[:lower:]' '[:upper:]'
}

_listed() { # _listed WORD "LIST OF WORDS"
  [[ " $2 " == *" $1 "* ]]
}

# parse_args "$@": --flag=VALUE or --flag VALUE for the names in FLAGS (and name, zone,
# project), --switch for SWITCHES, --dry-run, --help; `--` passes the rest to EXTRA.
parse_args() {
  local arg name
  while (($#)); do
    arg=$1
    shift
    name=${arg%%=*}
    name=${name#--}
    if [[ $arg == -h || $arg == --help ]]; then
      usage
      exit 0
    elif [[ $arg == --dry-run ]]; then
      DRY_RUN=1
    elif [[ $arg == -- ]]; then
      EXTRA+=("$@")
      break
    elif [[ -n $PASS_PREFIX && $arg == "$PASS_PREFIX"* ]]; then
      EXTRA+=("$arg")
    elif [[ $arg == --* ]] && _listed "$name" "name zone project ${FLAGS:-}"; then
      if [[ $arg == *=* ]]; then
        printf -v "$(_var "$name")" '%s' "${arg#*=}"
      elif (($#)); then
        printf -v "$(_var "$name")" '%s' "$1"
        shift
      else
        die "--$name needs a value (see $SCRIPT --help)"
      fi
    elif [[ $arg == --* && $arg != *=* ]] && _listed "$name" "${SWITCHES:-}"; then
      printf -v "$(_var "$name")" '%s' 1
    else
      die "unknown argument '$arg' (see $SCRIPT --help)"
    fi
  done
  LOCATION=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=("--project=$PROJECT")
  fi
}

# require FLAG...: stop with one line naming the first flag left empty.
require() {
  local name var
  for name in "$@"; do
    var=$(_var "$name")
    if [[ -z ${!var:-} ]]; then
      die "--$name is required (see $SCRIPT --help)"
    fi
  done
}

# on_workers COMMAND: run the shell COMMAND (one string) on --worker (a number or all) of the VM.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" "--worker=$WORKER" "--command=$1"
}

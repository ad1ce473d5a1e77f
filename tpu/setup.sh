#!/usr/bin/env bash
# Put this code on every worker of a TPU VM and install it there with JAX for TPU.
#
#   tpu/setup.sh --name=NAME --zone=ZONE [--repo=URL [--ref=REF]] [options]
#
# Without --repo it packs this checkout (tracked files as they are on disk, and untracked files
# that git does not ignore) and copies it to every worker; with --repo each worker clones URL
# (or fetches, when it has a clone) and checks out REF. Then, in ~/DIR on each worker, it
# installs uv (astral.sh's installer) unless there is one, makes .venv with Python --python
# (uv fetches it: the TPU images' own python3 can be older than the 3.11 this package needs) and
# installs the package plus `jax[tpu]` (JAX with the libtpu it pins, as the `tpu` extra does).
# Rerun it after changing the code: it updates the copy and the install in place.
#
#   --repo      git URL the workers clone (they need read access to it)
#   --ref       what to check out with --repo (default origin/HEAD; e.g. origin/main, a tag, a SHA)
#   --dir       where the code goes on each worker, under the home directory (default jaxpretrain)
#   --python    Python version for .venv (default 3.11)
#   --worker    all (default) or one worker number
#   --project   Google Cloud project (default: gcloud's configured one)
#   --dry-run   print the commands instead of running them

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

REPO=""
REF="origin/HEAD"
PYTHON="3.11"
FLAGS="repo ref dir python worker"
parse_args "$@"
require name zone dir

archive="jaxpretrain-src.tar.gz" # in the home directory of each worker while it is unpacked
dir=$(quote "$DIR")
if [[ -z $REPO ]]; then
  local_archive="${TMPDIR:-/tmp}/jaxpretrain-$NAME.tar.gz"
  list=(git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard)
  pack=(tar -czf "$local_archive" -C "$REPO_ROOT" --null -T -)
  if [[ -n $DRY_RUN ]]; then
    echo "$(quote "${list[@]}") | $(quote "${pack[@]}")"
  else
    "${list[@]}" | "${pack[@]}"
  fi
  run gcloud compute tpus tpu-vm scp "$local_archive" "$NAME:$archive" "${LOCATION[@]}" \
    "--worker=$WORKER"
  get_code="mkdir -p $dir; tar -xzf $archive -C $dir; rm $archive"
else
  get_code="if [ -d $dir/.git ]; then git -C $dir fetch --quiet origin;"
  get_code+=" else git clone --quiet $(quote "$REPO") $dir; fi"
  get_code+="; git -C $dir checkout --quiet --detach $(quote "$REF")"
fi

# Expanded on the worker, not here.
# shellcheck disable=SC2016
install='export PATH="$HOME/.local/bin:$PATH"'
install+="; command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh"
install+="; cd $dir; [ -x .venv/bin/python ] || uv venv --python $(quote "$PYTHON") .venv"
install+="; uv pip install --python .venv/bin/python -e . \"jax[tpu]\""
on_workers "set -e; $get_code; $install"

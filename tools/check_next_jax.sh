#!/usr/bin/env bash
# Runs the tests and `tools/gpu_bench.sh --cpu-smoke` on the jax the GPU image has (0.11, which
# needs Python >= 3.12) on this CPU machine, whose Python 3.11 stops at jax 0.10.2: so a GPU
# session does not spend its few minutes on an API change. Builds (once) a Debian trixie chroot
# with Python 3.13 at $ROOT, bind-mounts this checkout at /work inside it, installs the project
# with jax==$JAX_VERSION there and runs the suite. Needs root, debootstrap, unshare and network
# access to Debian and PyPI. The mounts live in a private mount namespace and vanish with it;
# outside $ROOT only the checkout's ignored files (egg-info, __pycache__) are written.
#
#   sudo [ROOT=DIR] [JAX_VERSION=V] tools/check_next_jax.sh [PYTEST ARGS...]
#   (default pytest arguments: -m "" -n auto, every test)
set -euo pipefail
if [ -z "${JAX_NEXT_PRIVATE_MOUNTS:-}" ]; then
  JAX_NEXT_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private "$0" "$@"
fi
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/opt/jax-next-root}
JAX_VERSION=${JAX_VERSION:-0.11.2}
VENV=/opt/venv

if [ ! -e "$ROOT/.bootstrapped" ]; then  # an interrupted debootstrap starts again
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git \
    trixie "$ROOT" http://deb.debian.org/debian
  touch "$ROOT/.bootstrapped"
fi
# The host's resolver, hosts (gloo resolves the host name) and CA bundle (a proxy may sign TLS).
cp /etc/resolv.conf /etc/hosts /etc/hostname "$ROOT/etc/"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/etc/pip.conf"

bind() {  # bind SOURCE TARGET-INSIDE-ROOT (private: unmounted when this namespace ends)
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2"
}
mount -t proc proc "$ROOT/proc"
bind /dev /dev
bind /dev/shm /dev/shm
bind /sys /sys
bind "$PWD" /work

pytest_args=("$@")
[ ${#pytest_args[@]} -gt 0 ] || pytest_args=(-m "" -n auto)
# A clean environment: none of this machine's pip, XLA or JAX settings leak in.
chroot "$ROOT" env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin bash -euo pipefail -c '
  cd /work
  git config --global --get-all safe.directory | grep -qx /work ||
    git config --global --add safe.directory /work
  [ -x '"$VENV"'/bin/python ] || python3 -m venv '"$VENV"'
  '"$VENV"'/bin/pip install --quiet --upgrade pip
  '"$VENV"'/bin/pip install --quiet "jax=='"$JAX_VERSION"'" -e ".[dev]"
  '"$VENV"'/bin/python -c "import jax, sys; print(\"jax\", jax.__version__, \"python\", sys.version.split()[0])"
  '"$VENV"'/bin/python -m pytest -p no:cacheprovider "$@"
  PYTHON='"$VENV"'/bin/python tools/gpu_bench.sh --cpu-smoke
' bash "${pytest_args[@]}"

#!/usr/bin/env bash
# Downloads, into .whl/, the wheels the device machine's GPU image lacks (Python 3.12, x86-64),
# for tools/gpu_bench.sh to install there. Run once here, before the device call:
#
#   tools/fetch_gpu_wheels.sh
#   # device run: carry [".whl"], command "tools/gpu_bench.sh"
#
# The image has jax 0.11, flax, optax, orbax, torch, sentencepiece and tensorboard; grain,
# array-record, ml_collections and datasketch (and what they need beyond the image) travel.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
mkdir -p .whl
packages=(grain array-record ml-collections datasketch cloudpickle portpicker fsspec)
for package in "${packages[@]}"; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl "$package"
done
ls -la .whl

#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs ruff and the whole suite once per
# Keras backend, each in its own process (Keras picks its backend once per process).
#   bash tests/run.sh                  # all backends
#   BACKENDS=jax bash tests/run.sh -k parity
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KERAS_PVT_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build of torch first, so nothing pulls a CUDA build; timm without its torchvision pin.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all,dev]"
python -m pip install -q --no-deps "timm>=1.0,<2"
ruff check keras_pvt tests conversion examples
# JAX compiles every eager op and jitted step per process; one persistent compilation cache
# for the whole run lets the many subprocess tests (CLI, examples, presets) reuse them.
jax_cache=$(mktemp -d)
trap 'rm -rf "$jax_cache"' EXIT
export JAX_COMPILATION_CACHE_DIR="$jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@" || status=$?
done
exit "$status"

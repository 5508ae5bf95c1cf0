#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs ruff and the whole suite once per
# Keras backend, each in its own process (Keras picks its backend once per process); JAX's
# run goes beside the others' when there are two cores or more.
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
logs=$(mktemp -d)
trap 'rm -rf "$jax_cache" "$logs"' EXIT
export JAX_COMPILATION_CACHE_DIR="$jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
backends=${BACKENDS:-tensorflow jax torch}
# JAX spends most of its run compiling (one core at a time), the others computing: with two
# cores or more, JAX's run goes beside the others' (its output follows theirs).
beside=""
if [ "$(nproc)" -ge 2 ] && [[ " $backends " == *" jax "* ]] && [ "$(wc -w <<<"$backends")" -gt 1 ]; then
  beside=jax
  (rc=0; KERAS_BACKEND=jax python -m pytest -q -p no:cacheprovider "$@" >"$logs/jax.log" 2>&1 || rc=$?
   echo "$rc" >"$logs/jax.status") &
fi
status=0
for backend in $backends; do
  [ "$backend" = "$beside" ] && continue
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@" || status=$?
done
if [ -n "$beside" ]; then
  wait
  echo "=== KERAS_BACKEND=jax (ran beside the others)"
  cat "$logs/jax.log"
  [ "$(cat "$logs/jax.status")" = 0 ] || status=$(cat "$logs/jax.status")
fi
exit "$status"

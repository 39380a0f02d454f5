#!/usr/bin/env bash
# The GPU check (issue 17, part 3) in one short call on a lent GPU machine (Python, JAX and PyTorch; no
# TensorFlow, no package registry). docs/benchmarks.md ("On a GPU") has the calls in order:
#
#   bash bench/gpu.sh --missing    # which of bench/gpu-requirements.txt (and OpenCV) the machine lacks
#   bash bench/gpu.sh --install    # installs them from bench/.gpu-wheelhouse/ (bench/gpu_wheelhouse.sh made it)
#   bash bench/gpu.sh [--small]    # installs what is still missing, then bench/gpu.py -> $OUT/gpu.json
#
# Everything goes into bench/.gpu-env, a virtual environment that sees the machine's own packages (its
# JAX, PyTorch and CUDA) and stays between calls while the machine is held -- so a wheelhouse too big for
# one call (OpenCV's wheel alone is 56 MB of 64 MiB) can arrive over two. KERAS_BACKEND defaults to jax.
# On a CPU (tests/test_gpu_check.py) PYTHON names an interpreter that has everything; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=run
case "${1:-}" in --missing) mode=missing; shift ;; --install) mode=install; shift ;; esac
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}  # the worker and the bench share a GPU
OUT=${OUT:-bench/.gpu-out}
mkdir -p "$OUT"
ENV=bench/.gpu-env
if [ -z "${PYTHON:-}" ]; then
    [ -x "$ENV/bin/python" ] || python3 -m venv --system-site-packages "$ENV"
    PYTHON=$ENV/bin/python
fi

missing() { "$PYTHON" bench/gpu_requirements.py; }

if [ "$mode" = missing ]; then
    missing | tee "$OUT/missing.txt"
    exit 0
fi
needed=$(missing)
if [ -n "$needed" ]; then
    [ -d bench/.gpu-wheelhouse ] || { printf 'missing, and no bench/.gpu-wheelhouse to install from:\n%s\n' "$needed" >&2; exit 3; }
    printf '%s\n' "$needed" >"$OUT/installing.txt"
    # pdqhash and hnswlib compile here, against the Cython and pybind11 the wheelhouse brings.
    "$PYTHON" -m pip install --quiet --no-index --find-links bench/.gpu-wheelhouse cython pybind11 setuptools wheel 2>/dev/null || true
    "$PYTHON" -m pip install --no-index --find-links bench/.gpu-wheelhouse --no-build-isolation -r "$OUT/installing.txt" \
        >"$OUT/pip.log" 2>&1 || { tail -40 "$OUT/pip.log" >&2; [ "$mode" = install ] || exit 4; }
fi
if [ "$mode" = install ]; then
    still=$(missing); printf 'still missing:\n%s\n' "${still:-(nothing)}"
    exit 0
fi
"$PYTHON" bench/gpu.py --out "$OUT/gpu.json" "$@"

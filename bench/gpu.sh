#!/usr/bin/env bash
# The GPU check (issue 17, part 3) on a lent GPU machine (Python, JAX and PyTorch; no TensorFlow, no package
# registry, 64 MiB carried per call). docs/benchmarks.md ("On a GPU") has the calls; in short, back to back:
#
#   bash bench/gpu.sh --install    # carry bench/.gpu-wheelhouse-opencv: OpenCV, if the machine lacks it
#   bash bench/gpu.sh [--small]    # carry bench/.gpu-wheelhouse: the rest, then bench/gpu.py -> $OUT/gpu.json
#   bash bench/gpu.sh --missing    # (no install) what the machine lacks, and whether it can build sources
#
# bench/gpu_wheelhouse.sh makes both wheelhouses here beforehand. Everything is installed into bench/.gpu-env, a
# virtual environment over the machine's own packages (its JAX, PyTorch and CUDA) that git ignores, so the
# machine keeps it between calls while it is held. KERAS_BACKEND defaults to jax. On a CPU
# (tests/test_gpu_check.py) PYTHON names an interpreter that has everything, and nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# bench/gpu.py's budget counts from here: installing is part of the one call's ten minutes.
export LOOKALIKE_GPU_CHECK_STARTED=${LOOKALIKE_GPU_CHECK_STARTED:-$(date +%s)}
mode=run
case "${1:-}" in --missing) mode=missing; shift ;; --install) mode=install; shift ;; esac
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}  # the bench and the worker share a GPU
OUT=${OUT:-bench/.gpu-out}
mkdir -p "$OUT"
ENV=bench/.gpu-env
if [ -z "${PYTHON:-}" ]; then
    if [ ! -x "$ENV/bin/python" ]; then
        # Without the OS's venv package (Debian's python3-venv) ensurepip fails: a venv without pip, then, which
        # the base interpreter's pip installs into (pip --python).
        python3 -m venv --system-site-packages "$ENV" >"$OUT/venv.log" 2>&1 ||
            { rm -rf "$ENV"; python3 -m venv --system-site-packages --without-pip "$ENV"; }
    fi
    PYTHON=$ENV/bin/python
fi
pip_install() {
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then "$PYTHON" -m pip install "$@"
    else python3 -m pip --python "$PYTHON" install "$@"; fi
}

"$PYTHON" bench/gpu_requirements.py --preflight >"$OUT/preflight.json" || true
missing() { "$PYTHON" bench/gpu_requirements.py; }
if [ "$mode" = missing ]; then
    cat "$OUT/preflight.json"
    missing | tee "$OUT/missing.txt"
    exit 0
fi

needed=$(missing)
if [ -n "$needed" ]; then
    houses=()
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    for house in bench/.gpu-wheelhouse bench/.gpu-wheelhouse-opencv; do
        [ -d "$house" ] || continue
        if [ "$(cat "$house/PYTHON_VERSION" 2>/dev/null)" != "$version" ]; then
            echo "$house is for Python $(cat "$house/PYTHON_VERSION" 2>/dev/null || echo '?'), this is $version:" \
                 "bash bench/gpu_wheelhouse.sh '' $version" >&2
            exit 3
        fi
        houses+=(--find-links "$house")
    done
    [ ${#houses[@]} -gt 0 ] || { printf 'missing, and no wheelhouse carried:\n%s\n' "$needed" >&2; exit 3; }
    : >"$OUT/pip.log"
    # Wheels first, in one go (numpy 2 among them where the machine has 1.x), then the sources that compile against
    # them: pip builds every source before it installs anything, so one call would build pdqhash on the old numpy.
    # What the carried wheelhouses do not hold is left for a call that carries it (reported below).
    wheels=$(printf '%s\n' "$needed" | grep -v -E '^(pdqhash|hnswlib)' || true)
    sources=$(printf '%s\n' "$needed" | grep -E '^(pdqhash|hnswlib)' || true)
    if [ -n "$wheels" ]; then
        printf '%s\n' "$wheels" >"$OUT/wheels.txt"
        pip_install --no-index "${houses[@]}" -r "$OUT/wheels.txt" >>"$OUT/pip.log" 2>&1 ||
            while read -r line; do pip_install --no-index "${houses[@]}" "$line" >>"$OUT/pip.log" 2>&1 || true
            done <"$OUT/wheels.txt"
    fi
    if [ -n "$sources" ] && [ -z "$(missing | grep -v -E '^(pdqhash|hnswlib|opencv)' || true)" ]; then
        printf '%s\n' "$sources" >"$OUT/sources.txt"
        { pip_install --no-index "${houses[@]}" "cython>=3,<4" "pybind11>=2.12,<4" "setuptools>=68" wheel &&
          pip_install --no-index "${houses[@]}" --no-build-isolation -r "$OUT/sources.txt"; } >>"$OUT/pip.log" 2>&1 ||
            echo "building $(tr '\n' ' ' <"$OUT/sources.txt")failed: $OUT/pip.log, $OUT/preflight.json" >&2
    fi
fi
still=$(missing)
if [ "$mode" = install ]; then
    printf 'still missing:\n%s\n' "${still:-(nothing)}"
    exit 0
fi
if [ -n "$still" ]; then
    printf 'still missing (see %s/pip.log):\n%s\n' "$OUT" "$still" >&2
    exit 4
fi
"$PYTHON" bench/gpu.py --out "$OUT/gpu.json" "$@"

#!/usr/bin/env bash
# Builds bench/.gpu-wheelhouse/: what bench/gpu.sh installs on a lent GPU machine that has Python, JAX and
# PyTorch but no package registry and no TensorFlow (issue 17, part 3). Run here, where PyPI is reachable:
#
#   bash bench/gpu_wheelhouse.sh [MISSING_FILE] [PYTHON_VERSION]
#
# MISSING_FILE: the lines `bench/gpu.sh --missing` printed on the machine (default: all of
# bench/gpu-requirements.txt, which leaves out OpenCV: its wheel alone is 56 MB of the 64 MiB one call may
# carry -- bring it in a call of its own, `bench/gpu.sh --install`, only where the machine lacks it).
# PYTHON_VERSION: the machine's (default 3.12). Binary wheels only, for manylinux x86_64; pdqhash and hnswlib
# publish none for 3.12, so their sources come with the tools that build them there (Cython, pybind11).
set -euo pipefail
cd "$(dirname "$0")/.."
WANTED=${1:-bench/gpu-requirements.txt}
PYVER=${2:-3.12}
HOUSE=bench/.gpu-wheelhouse
PIP=${PIP:-.venv/bin/pip}
rm -rf "$HOUSE" && mkdir -p "$HOUSE"
lines=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$WANTED")
binary_lines=$(printf '%s\n' "$lines" | grep -v -E '^(pdqhash|hnswlib)' || true)
source_lines=$(printf '%s\n' "$lines" | grep -E '^(pdqhash|hnswlib)' || true)
binary=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
if [ -n "$binary_lines" ]; then
    # shellcheck disable=SC2086  # one argument per requirement line
    printf '%s\n' "$binary_lines" > "$HOUSE/.binary.txt"
    "$PIP" download --quiet --dest "$HOUSE" "${binary[@]}" -r "$HOUSE/.binary.txt"
fi
if [ -n "$source_lines" ]; then
    "$PIP" download --quiet --dest "$HOUSE" "${binary[@]}" "cython>=3,<4" "pybind11>=2.12,<4" "setuptools>=68" wheel
    # The sources as files (pip download would build their metadata here, needing their build tools).
    printf '%s\n' "$source_lines" | .venv/bin/python bench/gpu_wheelhouse_sources.py "$HOUSE"
fi
rm -f "$HOUSE/.binary.txt"
du -sh "$HOUSE"

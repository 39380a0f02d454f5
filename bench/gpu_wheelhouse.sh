#!/usr/bin/env bash
# Builds the wheelhouses bench/gpu.sh installs from on a lent GPU machine that has Python, JAX and PyTorch but
# no package registry and no TensorFlow (issue 17, part 3). Run here, where PyPI is reachable:
#
#   bash bench/gpu_wheelhouse.sh [MISSING_FILE] [PYTHON_VERSION]
#
# bench/.gpu-wheelhouse: the lines of MISSING_FILE (what `bench/gpu.sh --missing` printed there; default, or '':
# all of bench/gpu-requirements.txt: about 59 MB for Python 3.12, which with the repository fits one call's
# 64 MiB). bench/.gpu-wheelhouse-opencv: OpenCV alone (56 MB: a call of its own, `bench/gpu.sh --install`).
# PYTHON_VERSION: the machine's (default 3.12), stamped into each. Binary wheels for manylinux x86_64 only;
# pdqhash and hnswlib publish none for 3.12, so their sources come with the tools that build them there
# (Cython, pybind11; the machine needs a C++ compiler and Python's headers: `bench/gpu.sh --missing` says).
set -euo pipefail
cd "$(dirname "$0")/.."
WANTED=${1:-bench/gpu-requirements.txt}
WANTED=${WANTED:-bench/gpu-requirements.txt}
PYVER=${2:-3.12}
PIP=${PIP:-.venv/bin/pip}
binary=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
for house in bench/.gpu-wheelhouse bench/.gpu-wheelhouse-opencv; do
    rm -rf "$house" && mkdir -p "$house" && echo "$PYVER" >"$house/PYTHON_VERSION"
done
HOUSE=bench/.gpu-wheelhouse
lines=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$WANTED")
binary_lines=$(printf '%s\n' "$lines" | grep -v -E '^(pdqhash|hnswlib|opencv)' || true)
source_lines=$(printf '%s\n' "$lines" | grep -E '^(pdqhash|hnswlib)' || true)
if [ -n "$binary_lines" ]; then
    printf '%s\n' "$binary_lines" >"$HOUSE/.binary.txt"
    "$PIP" download --quiet --dest "$HOUSE" "${binary[@]}" -r "$HOUSE/.binary.txt"
    rm -f "$HOUSE/.binary.txt"
fi
if [ -n "$source_lines" ]; then
    "$PIP" download --quiet --dest "$HOUSE" "${binary[@]}" "cython>=3,<4" "pybind11>=2.12,<4" "setuptools>=68" wheel
    # The sources as files (pip download would build their metadata here, needing their build tools).
    printf '%s\n' "$source_lines" | .venv/bin/python bench/gpu_wheelhouse_sources.py "$HOUSE"
fi
# OpenCV: always offered on its own (the machine may have it; bench/gpu.sh --install installs it only if not).
"$PIP" download --quiet --dest bench/.gpu-wheelhouse-opencv "${binary[@]}" --no-deps "opencv-python-headless>=4.9,<6"
du -sh bench/.gpu-wheelhouse bench/.gpu-wheelhouse-opencv

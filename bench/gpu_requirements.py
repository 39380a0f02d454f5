"""Prints the lines of bench/gpu-requirements.txt (and OpenCV) this interpreter does not satisfy: what
bench/gpu.sh must install on a GPU machine, and what bench/gpu_wheelhouse.sh must bring for it. With
``--preflight``, as JSON, what decides whether that install can work there: the interpreter, the Keras
backend and NumPy it has, and what building pdqhash and hnswlib from source needs (a C++ compiler,
Python's headers). Uses only the standard library and pip's own copy of `packaging` (a bare machine may
have nothing else)."""

import importlib.util
import json
import os
import platform
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement

REQUIREMENTS = Path(__file__).with_name("gpu-requirements.txt")
# Not in the wheelhouse by default (56 MB): bench/gpu_wheelhouse.sh brings it when this names it.
OPENCV = "opencv-python-headless>=4.9,<6"
# OpenCV's other distributions provide the same cv2 module.
OPENCV_ALTERNATIVES = ("opencv-python-headless", "opencv-python", "opencv-contrib-python",
                       "opencv-contrib-python-headless")


def satisfied(requirement: Requirement) -> bool:
    names = OPENCV_ALTERNATIVES if requirement.name in OPENCV_ALTERNATIVES else (requirement.name,)
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if requirement.specifier.contains(version, prereleases=True):
            return True
    return False


def missing() -> list[str]:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    wanted = [line for line in lines if line] + [OPENCV]
    return [line for line in wanted if not satisfied(Requirement(line))]


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def preflight() -> dict:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return {
        "python": platform.python_version(), "executable": sys.executable,
        "keras_backend": backend, "backend_installed": importlib.util.find_spec(backend) is not None,
        "backend_version": version_of({"torch": "torch", "jax": "jax"}.get(backend, backend)),
        "numpy": version_of("numpy"),
        "python_headers": (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file(),
        "cxx_compiler": next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None),
        "pip": importlib.util.find_spec("pip") is not None,
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--preflight"]:
        print(json.dumps(preflight(), indent=2))
    else:
        sys.stdout.write("".join(f"{line}\n" for line in missing()))

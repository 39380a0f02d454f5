"""Print constraints.txt: the exact versions, as installed in this environment, of everything the Docker
images install (the server's dependencies and the `api`, `worker-cpu` and `worker-gpu` extras of
pyproject.toml, with their own dependencies, recursively).

    .venv/bin/python deploy/constraints.py > constraints.txt

Run it with the .venv that `make test` passed in, on Linux with the images' Python (3.11): environment
markers are evaluated here. The images install with `pip install -c constraints.txt`, so they get the
versions the tests ran with; tests/test_compose.py checks the file against pyproject.toml.

As `pip freeze` does, it leaves out pip, setuptools and wheel (the base image's). The GPU build's
`tensorflow` is pinned to the version of the `tensorflow-cpu` installed here (the two are released
together); the CUDA wheels its `and-cuda` extra brings are not installed here, so they keep TensorFlow's
own bounds.
"""

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXTRAS = ("api", "worker-cpu", "worker-gpu")
# Left to the base image, as `pip freeze` leaves them out: the installer's own tools.
INSTALLER_TOOLS = {"pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def roots() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements need, recursively (extras and markers applied)."""
    found: dict[str, metadata.Distribution] = {}
    done: dict[str, set[str]] = {}
    pending = [(requirement, "") for requirement in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = requirement.name
        if canonical(name) == "tensorflow":  # the GPU build: not installed here (see the docstring)
            continue
        if canonical(name) in INSTALLER_TOOLS:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"deploy/constraints.py: {name} is not installed here; install the project first (make install)")
        key = canonical(distribution.metadata["Name"])
        found[key] = distribution
        wanted = {""} | set(requirement.extras)
        new = wanted - done.setdefault(key, set())
        done[key] |= new
        for text in distribution.requires or []:
            for each in new:
                pending.append((Requirement(text), each))
    return found


def main() -> None:
    found = closure(roots())
    lines = {distribution.metadata["Name"]: distribution.version for distribution in found.values()}
    lines["tensorflow"] = metadata.version("tensorflow-cpu")
    print("# The versions the Docker images install (pip install -c constraints.txt): the server's dependencies")
    print("# as installed in the environment the tests ran in. Regenerate, never edit:")
    print("#     .venv/bin/python deploy/constraints.py > constraints.txt")
    print("# (tensorflow, for the GPU build, is pinned to tensorflow-cpu's version.)")
    for name in sorted(lines, key=canonical):
        print(f"{name}=={lines[name]}")


if __name__ == "__main__":
    main()

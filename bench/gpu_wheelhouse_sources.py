"""Fetches the newest source distribution within each requirement read from stdin (``name>=x,<y``) from
PyPI's JSON API into the folder named by the first argument: bench/gpu_wheelhouse.sh's packages without
wheels for the GPU machines' Python. Build machine only (it reaches PyPI)."""

import sys
from pathlib import Path

import requests
from packaging.requirements import Requirement
from packaging.version import Version

folder = Path(sys.argv[1])
for line in filter(None, (line.strip() for line in sys.stdin)):
    requirement = Requirement(line)
    releases = requests.get(f"https://pypi.org/pypi/{requirement.name}/json", timeout=60).json()["releases"]
    version = max((v for v in releases if requirement.specifier.contains(v) and
                   any(f["packagetype"] == "sdist" for f in releases[v])), key=Version)
    sdist = next(f for f in releases[version] if f["packagetype"] == "sdist")
    response = requests.get(sdist["url"], timeout=120)
    response.raise_for_status()
    (folder / sdist["filename"]).write_bytes(response.content)
    print(f"{sdist['filename']} ({len(response.content)} bytes)")

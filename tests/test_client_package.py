"""The client is a distribution of its own (client/, lookalike-client): its wheel holds one top-level package
and asks for no part of the server's stack, and installed alone in a fresh virtual environment its
`lookalike` command runs and talks to the real API."""

import json
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lookalike_client.calibration import propose_threshold
from tests.conftest import REPO

SERVER_STACK = re.compile(r"numpy|opencv|celery|tensorflow|keras|redis|flask|gunicorn|pydantic|lookalike$", re.I)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The client's wheel, built from a copy of client/ (the build writes nothing into the checkout)."""
    folder = tmp_path_factory.mktemp("client-wheel")
    source = folder / "source"
    shutil.copytree(REPO / "client", source,
                    ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(folder / "dist"), str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    [path] = (folder / "dist").glob("lookalike_client-*.whl")
    return path


def test_the_wheel_holds_only_lookalike_client_and_needs_no_server_stack(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        metadata, entry_points = archive.read(metadata).decode(), archive.read(entry_points).decode()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"lookalike_client"}
    assert "Name: lookalike-client" in metadata
    requirements = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)", metadata, re.MULTILINE)
    assert sorted(requirements) == ["click", "requests", "tqdm", "urllib3"]
    assert not [name for name in requirements if SERVER_STACK.search(name)]
    assert "lookalike = lookalike_client.cli:main" in entry_points


def test_the_wheel_installed_alone_runs_lookalike_against_the_api(wheel, api, collection, tmp_path):
    """A fresh venv without system packages: pip brings the client's few dependencies (from the index pip is
    configured with), none of the server's; the command runs from a folder where no server package is."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, lookalike = venv / "bin" / "python", venv / "bin" / "lookalike"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                str(wheel)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    packages = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"lookalike-client", "requests", "click", "tqdm"} <= packages
    assert not [name for name in packages if SERVER_STACK.search(name)], packages
    server_free = subprocess.run([str(python), "-c", "import importlib.util as u; "
                                  "print([m for m in ('api', 'shared', 'worker', 'numpy') if u.find_spec(m)])"],
                                 capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert server_free.stdout.strip() == "[]", server_free.stderr

    version = subprocess.run([str(lookalike), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == "lookalike, version 0.1.0", version.stderr
    settings = subprocess.run([str(lookalike), "--url", api.base_url, "settings", collection, "--set", "kind=allow",
                               "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert settings.returncode == 0, settings.stderr
    assert json.loads(settings.stdout)["settings"]["kind"] == "allow"


def test_the_clients_calibration_answers_as_the_servers():
    """lookalike calibrate's plain-Python propose_threshold agrees with shared/calibration.py (NumPy)."""
    from shared.calibration import propose_threshold as servers

    generator = random.Random(7)
    for trial in range(300):
        count = generator.randint(1, 40)
        scores = [round(generator.uniform(-1, 1), generator.choice([1, 2, 6])) for _ in range(count)]  # ties too
        same = [generator.random() < 0.5 for _ in range(count)]
        target = generator.choice([0.5, 0.75, 0.9, 0.99, 1.0])
        positives = generator.choice([None, count + 3])
        assert propose_threshold(scores, same, target, positives) == servers(scores, same, target, positives), trial

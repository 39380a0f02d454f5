"""The GPU check (bench/gpu.sh, issue 17 part 3) runs on a CPU with the backend the GPU machines use (JAX).

No GPU here: the figures of a CPU run say nothing about a GPU (docs/benchmarks.md has the GPU's once a
machine is lent). What this checks is that the one call the script gets works: the report is written with
every phase, the worker runs the backend it was given, and the goals are judged from the figures.
"""

import json
import os
import signal
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from bench import gpu_requirements
from tests.conftest import REPO


def run_in_own_group(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``command`` in a process group of its own; on timeout the group gets SIGTERM (bench/gpu.py then stops
    the stacks it started) before the test fails."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=180)
        pytest.fail(f"bench/gpu.sh --small ran past {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_small_run_on_cpu_with_jax(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(KERAS_BACKEND="jax", PYTHON=sys.executable, OUT=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    # A budget no busy CI machine reaches (on a GPU machine it is what keeps the one call under ten minutes).
    done = run_in_own_group(["bash", "bench/gpu.sh", "--small", "--budget-seconds", "1500"], env, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu.json").read_text())

    forward = report["forward"]
    assert forward["machine"]["backend"] == "jax" and forward["machine"]["accelerators"] == []
    for precision in ("float32", "mixed_float16"):
        assert set(forward["images_per_second"][precision]) == {"1", "2"}
        assert all(rate > 0 for rate in forward["images_per_second"][precision].values())
        assert forward["single_image_ms"][precision] > 0

    service = report["end_to_end"]
    assert service["worker"]["backend"] == "jax"  # the stack's worker ran the backend the script was given
    best = report["goals"]["best_forward"]
    assert service["worker"]["max_batch"] == best["batch"]
    assert service["worker"]["mixed_precision"] == (best["precision"] == "mixed_float16")
    assert service["bulk_images_per_second"] > 0 and service["single_images_per_second"] > 0
    assert service["query_p50_ms"] > 0

    goals = report["goals"]
    achieved = max(service["bulk_images_per_second"], service["single_images_per_second"])
    assert goals["end_to_end_over_forward"] == round(achieved / best["images_per_second"], 3)
    assert goals["end_to_end >= 0.9 x forward at the best batch"] == (achieved >= 0.9 * best["images_per_second"])
    # Other batcher settings measured the same way (on a CPU, one: a batch of one).
    assert [(row["max_batch"], row["batch_wait_ms"], row["hash_processes"]) for row in report["batcher_settings"]] \
        == ([(1, 5.0, 0)] if best["batch"] != 1 else [])
    assert all(row["bulk_images_per_second"] > 0 for row in report["batcher_settings"])
    single_ms = forward["single_image_ms"][best["precision"]]
    assert goals["query p50 <= forward + 10 ms"] == (service["query_p50_ms"] <= single_ms + 10)


def test_missing_lists_what_the_interpreter_lacks(tmp_path, monkeypatch):
    assert gpu_requirements.missing() == []  # the dev environment has all of it (OpenCV included)
    wanted = tmp_path / "requirements.txt"
    wanted.write_text("numpy>=2  # present\nnumpy<1\nno-such-distribution-here>=1\n")
    monkeypatch.setattr(gpu_requirements, "REQUIREMENTS", wanted)
    assert gpu_requirements.missing() == ["numpy<1", "no-such-distribution-here>=1"]


def test_gpu_requirements_follow_pyproject():
    """bench/gpu-requirements.txt is the service's runtime dependencies less TensorFlow, bounds included."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["api"] + \
        project["optional-dependencies"]["worker-cpu"] + project["optional-dependencies"]["local"]
    expected = {Requirement(line).name: str(Requirement(line)) for line in runtime}
    expected.pop("tensorflow-cpu")
    expected.pop("opencv-python-headless")  # listed by bench/gpu_requirements.py itself (brought apart)
    lines = [line.split("#")[0].strip() for line in gpu_requirements.REQUIREMENTS.read_text().splitlines()]
    listed = {Requirement(line).name: str(Requirement(line)) for line in lines if line}
    assert {name: listed.get(name) for name in expected} == expected
    assert str(Requirement(gpu_requirements.OPENCV)) == str(Requirement(next(
        line for line in runtime if line.startswith("opencv-python-headless"))))


def test_missing_mode_lists_nothing_here_and_says_what_a_build_needs(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "KERAS_BACKEND": "jax"}
    done = subprocess.run(["bash", "bench/gpu.sh", "--missing"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "missing.txt").read_text() == ""
    preflight = json.loads((tmp_path / "preflight.json").read_text())
    assert preflight["executable"] == sys.executable and preflight["keras_backend"] == "jax"
    assert preflight["backend_installed"] is True and preflight["numpy"].startswith("2.")
    assert isinstance(preflight["python_headers"], bool) and preflight["pip"] is True


def test_a_wheelhouse_for_another_python_is_refused_before_installing(tmp_path):
    """A wheelhouse made for another Python would install nothing useful: gpu.sh says which to make instead."""
    folder = tmp_path / "repo"
    (folder / "bench").mkdir(parents=True)
    for name in ("gpu.sh", "gpu_requirements.py", "gpu-requirements.txt"):
        (folder / "bench" / name).write_bytes((REPO / "bench" / name).read_bytes())
    (folder / "bench" / "gpu-requirements.txt").write_text("no-such-distribution-here>=1\n")
    house = folder / "bench" / ".gpu-wheelhouse"
    house.mkdir()
    (house / "PYTHON_VERSION").write_text("2.7\n")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert "is for Python 2.7, this is %d.%d" % sys.version_info[:2] in done.stderr

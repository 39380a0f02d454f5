"""`make run`: the whole stack starts with an embedded Redis, a worker that dies is started again, and
Ctrl-C -- sent to the terminal's whole process group -- stops everything quietly and leaves nothing running,
also when Ctrl-C comes twice, whether the test passes or fails."""

import os
import signal
import subprocess
import sys
import time

import psutil
import redis
import requests

from shared.embedded_redis import free_port
from tests.conftest import REPO

READY_TIMEOUT_SECONDS = 240


def readiness(api_port: int) -> dict | None:
    """The body of /readyz once it is ready; None for any other answer, slow or failed."""
    try:
        ready = requests.get(f"http://127.0.0.1:{api_port}/readyz?workers=1", timeout=10)
        return ready.json() if ready.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def wait_for(condition, what: str, log_path, supervisor: subprocess.Popen):
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while (value := condition()) is None or value is False:
        assert supervisor.poll() is None, f"make run exited before {what}:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what}:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.5)
    return value


def test_run_local_restarts_a_dead_worker_and_ctrl_c_stops_everything(tmp_path):
    api_port, redis_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=str(tmp_path / "data"), LOOKALIKE_PORT=str(api_port),
               LOOKALIKE_EMBEDDED_REDIS_PORT=str(redis_port), LOOKALIKE_WEIGHTS="random",
               LOOKALIKE_HEARTBEAT_SECONDS="1", LOOKALIKE_WORKER_METRICS_PORT="0", TF_CPP_MIN_LOG_LEVEL="2")
    log_path = tmp_path / "run.log"
    log = log_path.open("wb")
    # A process group of its own, as a shell gives a foreground job: Ctrl-C goes to the whole group.
    supervisor = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, psutil.Process] = {}  # every process the stack ran, to be sure none outlives the test

    def note_parts() -> list[psutil.Process]:
        parts = psutil.Process(supervisor.pid).children(recursive=True)
        for part in parts:
            seen.setdefault(part.pid, part)
        return parts

    try:
        ready = wait_for(lambda: readiness(api_port), "ready API", log_path, supervisor)
        assert ready["weights"] == ["random(seed=0)"]
        assert (tmp_path / "data" / "redis").is_dir()  # the embedded Redis keeps its files there
        parts = note_parts()
        commands = [" ".join(part.cmdline()) for part in parts]
        assert any("redis-server" in command for command in commands)
        assert any(command.endswith("-m worker --role webhooks") for command in commands)

        [worker_pid] = [worker["pid"] for worker in ready["workers"]]
        os.kill(worker_pid, signal.SIGKILL)  # the worker dies; make run starts another, the rest go on
        wait_for(lambda: [w["pid"] for w in (readiness(api_port) or {"workers": []})["workers"]
                          if w["pid"] != worker_pid] or None, "a new worker", log_path, supervisor)
        note_parts()

        os.killpg(supervisor.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        deadline = time.monotonic() + 60
        while "make run: stopping api" not in log_path.read_text():  # the stop has begun (it takes seconds)
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(supervisor.pid, signal.SIGINT)  # impatient: Ctrl-C again while it stops
        assert supervisor.wait(90) == 0
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=30)
        assert alive == []
        output = log_path.read_text()
        assert "worker exited with status -9; starting it again" in output
        assert "stopping the rest now" in output
        assert "Traceback" not in output, output[-5000:]
    finally:
        for process in [psutil.Process(supervisor.pid)] if supervisor.poll() is None else []:
            process.kill()
        for process in seen.values():
            try:
                for child in process.children(recursive=True):
                    child.kill()
                process.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


def test_run_local_with_a_cluster_store_starts_a_redis_for_the_broker_only(redis_cluster, tmp_path):
    api_port, broker_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=str(tmp_path / "data"), LOOKALIKE_PORT=str(api_port),
               LOOKALIKE_EMBEDDED_REDIS_PORT=str(broker_port), LOOKALIKE_WEIGHTS="random",
               LOOKALIKE_REDIS_MODE="cluster", LOOKALIKE_REDIS_URL=redis_cluster.url,
               LOOKALIKE_HEARTBEAT_SECONDS="1", LOOKALIKE_WORKER_METRICS_PORT="0", TF_CPP_MIN_LOG_LEVEL="2")
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: readiness(api_port), "ready API", log_path, supervisor)
            assert f"embedded Redis for the broker on redis://127.0.0.1:{broker_port}/0" in log_path.read_text()
            assert not (tmp_path / "data" / "redis").exists()  # no embedded store: the cluster is the store
            with redis.Redis(port=broker_port) as broker:
                assert broker.exists("_kombu.binding.index")  # the broker's queues are there, the store's keys not
                assert not any(key.startswith(b"lookalike:") for key in broker.scan_iter())
        finally:
            parts = psutil.Process(supervisor.pid).children(recursive=True) if supervisor.poll() is None else []
            if supervisor.poll() is None:
                os.killpg(supervisor.pid, signal.SIGINT)
                supervisor.wait(90)
            psutil.wait_procs(parts, timeout=30)
            for part in parts:
                if part.is_running():
                    part.kill()

"""`make run`: the whole stack starts with an embedded Redis, a worker that dies is started again, and
Ctrl-C -- sent to the terminal's whole process group -- stops everything quietly and leaves nothing running,
also when Ctrl-C comes twice, whether the test passes or fails."""

import os
import signal
import sys

import psutil
import redis
import requests

from shared.embedded_redis import free_port
from shared.processes import ChildProcess
from tests.conftest import REPO

READY_TIMEOUT_SECONDS = 240
# `make run` stops its parts one after another, each within 30 s, then Redis: more than that is a hang.
STOP_SECONDS = 120


def readiness(api_port: int) -> dict | None:
    """The body of /readyz once it is ready; None for any other answer, slow or failed."""
    try:
        ready = requests.get(f"http://127.0.0.1:{api_port}/readyz?workers=1", timeout=10)
        return ready.json() if ready.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def make_run(env: dict, log_path) -> ChildProcess:
    """scripts/run_local.py in a process group of its own, as a shell runs a foreground job (Ctrl-C goes to the
    whole group), its output in ``log_path``."""
    return ChildProcess("make run", [sys.executable, "scripts/run_local.py"], env=env, cwd=REPO, log_path=log_path,
                        stop_timeout=STOP_SECONDS)


def test_run_local_restarts_a_dead_worker_and_ctrl_c_stops_everything(tmp_path):
    api_port, redis_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=str(tmp_path / "data"), LOOKALIKE_PORT=str(api_port),
               LOOKALIKE_EMBEDDED_REDIS_PORT=str(redis_port), LOOKALIKE_WEIGHTS="random",
               LOOKALIKE_HEARTBEAT_SECONDS="1", LOOKALIKE_WORKER_METRICS_PORT="0", TF_CPP_MIN_LOG_LEVEL="2")
    log_path = tmp_path / "run.log"
    supervisor = make_run(env, log_path).start()
    seen: dict[int, psutil.Process] = {}  # every process the stack ran, to be sure none outlives the test

    def note_parts() -> list[psutil.Process]:
        parts = psutil.Process(supervisor.pid).children(recursive=True)
        for part in parts:
            seen.setdefault(part.pid, part)
        return parts

    try:
        ready = supervisor.wait_until(lambda: readiness(api_port), "ready API", READY_TIMEOUT_SECONDS, interval=0.5)
        assert ready["weights"] == ["random(seed=0)"]
        assert (tmp_path / "data" / "redis").is_dir()  # the embedded Redis keeps its files there
        parts = note_parts()
        commands = [" ".join(part.cmdline()) for part in parts]
        assert any("redis-server" in command for command in commands)
        assert any(command.endswith("-m worker --role webhooks") for command in commands)

        [worker_pid] = [worker["pid"] for worker in ready["workers"]]
        os.kill(worker_pid, signal.SIGKILL)  # the worker dies; make run starts another, the rest go on
        supervisor.wait_until(lambda: [w["pid"] for w in (readiness(api_port) or {"workers": []})["workers"]
                                       if w["pid"] != worker_pid], "a new worker", READY_TIMEOUT_SECONDS, interval=0.5)
        note_parts()

        supervisor.send_signal(signal.SIGINT, group=True)  # what Ctrl-C in the terminal sends
        # The stop has begun (it takes seconds).
        supervisor.wait_until(lambda: "make run: stopping api" in supervisor.output(), "its stop", 60, interval=0.05)
        supervisor.send_signal(signal.SIGINT, group=True)  # impatient: Ctrl-C again while it stops
        assert supervisor.wait(90) == 0
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=30)
        assert alive == []
        output = log_path.read_text()
        assert "worker exited with status -9; starting it again" in output
        assert "stopping the rest now" in output
        assert "Traceback" not in output, output[-5000:]
    finally:
        supervisor.stop()  # SIGTERM (make run stops its parts), SIGKILL for them all if it has not in STOP_SECONDS
        for process in seen.values():  # and, should a part have outlived make run, that part
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def test_run_local_with_a_cluster_store_starts_a_redis_for_the_broker_only(redis_cluster, tmp_path):
    api_port, broker_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=str(tmp_path / "data"), LOOKALIKE_PORT=str(api_port),
               LOOKALIKE_EMBEDDED_REDIS_PORT=str(broker_port), LOOKALIKE_WEIGHTS="random",
               LOOKALIKE_REDIS_MODE="cluster", LOOKALIKE_REDIS_URL=redis_cluster.url,
               LOOKALIKE_HEARTBEAT_SECONDS="1", LOOKALIKE_WORKER_METRICS_PORT="0", TF_CPP_MIN_LOG_LEVEL="2")
    with make_run(env, tmp_path / "run.log") as supervisor:
        supervisor.wait_until(lambda: readiness(api_port), "ready API", READY_TIMEOUT_SECONDS, interval=0.5)
        assert f"embedded Redis for the broker on redis://127.0.0.1:{broker_port}/0" in supervisor.output()
        assert not (tmp_path / "data" / "redis").exists()  # no embedded store: the cluster is the store
        with redis.Redis(port=broker_port) as broker:
            assert broker.exists("_kombu.binding.index")  # the broker's queues are there, the store's keys not
            assert not any(key.startswith(b"lookalike:") for key in broker.scan_iter())

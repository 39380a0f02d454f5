"""`make run`: the whole stack starts with an embedded Redis and Ctrl-C leaves nothing running."""

import os
import signal
import subprocess
import sys
import time

import psutil
import requests

from shared.embedded_redis import free_port
from tests.conftest import REPO


def test_run_local_starts_everything_and_ctrl_c_stops_it(tmp_path):
    api_port, redis_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=str(tmp_path / "data"), LOOKALIKE_PORT=str(api_port),
               LOOKALIKE_EMBEDDED_REDIS_PORT=str(redis_port), LOOKALIKE_WEIGHTS="random",
               LOOKALIKE_HEARTBEAT_SECONDS="1", TF_CPP_MIN_LOG_LEVEL="2")
    log = (tmp_path / "run.log").open("wb")
    supervisor = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        ready = None
        while time.monotonic() < deadline and supervisor.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, (tmp_path / "run.log").read_text()[-3000:]
        assert ready.json()["weights"] == ["random(seed=0)"]
        assert (tmp_path / "data" / "redis").is_dir()  # the embedded Redis keeps its files there

        parts = psutil.Process(supervisor.pid).children(recursive=True)
        assert any("redis-server" in " ".join(p.cmdline()) for p in parts)
        supervisor.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert supervisor.wait(60) == 0
        gone, alive = psutil.wait_procs(parts, timeout=10)
        assert alive == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        log.close()

"""Tasks survive a worker killed with SIGKILL: a new worker finishes every one, each image once."""

import io
import os
import signal
import sys
import time

from api.app import create_app
from shared.settings import Settings
from shared.store import Store
from tests.conftest import ManagedProcess, natural_images

TASKS = 50
VISIBILITY_TIMEOUT = 8


def test_tasks_of_a_killed_worker_are_finished_by_the_next(redis_server, service_env, tmp_path):
    # A Redis database of its own, so the session's worker takes none of these tasks; the
    # real Flask app (test client) enqueues them.
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    env = service_env | {"LOOKALIKE_WORKER_METRICS_PORT": "0", "LOOKALIKE_REDIS_URL": url, "LOOKALIKE_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT),
                         "LOOKALIKE_WORKER_THREADS": "4", "LOOKALIKE_MAX_BATCH": "4"}
    settings = Settings(redis_url=url, visibility_timeout_seconds=VISIBILITY_TIMEOUT, auth=False)
    store = Store.from_settings(settings)
    client = create_app(settings).test_client()

    first = ManagedProcess("worker-1", [sys.executable, "-m", "worker"], env, tmp_path)
    first.wait_until(lambda: store.live_workers(max_age_seconds=3), "heartbeat")
    images = list(natural_images().values())
    task_ids = []
    for number in range(TASKS):
        response = client.post("/v1/collections/crash/images",
                                data={"image": (io.BytesIO(images[number % len(images)]), "a.jpg"), "id": f"img/{number}"})
        assert response.status_code == 202, response.json
        task_ids.append(response.json["task_id"])

    def states() -> list[str]:
        return [store.get_task(task_id)["state"] for task_id in task_ids]

    first.wait_until(lambda: states().count("succeeded") >= 5, "five finished tasks")
    os.kill(first.process.pid, signal.SIGKILL)  # mid-run: some done, some running, most queued
    first.process.wait()
    first.stop()
    killed_at = states()
    assert 5 <= killed_at.count("succeeded") < TASKS

    second = ManagedProcess("worker-2", [sys.executable, "-m", "worker"], env, tmp_path)
    try:
        deadline = time.monotonic() + 180
        while states().count("succeeded") < TASKS and time.monotonic() < deadline:
            assert second.process.poll() is None, second.output()[-3000:]
            time.sleep(0.5)
        assert states() == ["succeeded"] * TASKS, second.output()[-3000:]
    finally:
        second.stop()
    assert store.collection_info("crash")["images"] == TASKS  # every image once: no duplicates, none lost
    assert all(store.get_image("crash", f"img/{number}") for number in range(TASKS))

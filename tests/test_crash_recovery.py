"""Tasks survive a worker killed with SIGKILL: another worker takes over the ones it held within seconds
of its heartbeat expiring (not after the 300 s visibility timeout), and each task's effect happens once."""

import io
import os
import signal
import socket
import sys
import time

from api.app import create_app
from shared import keys
from shared.settings import Settings
from shared.store import Store
from tests.conftest import ManagedProcess, consumer_alive, database_url, natural_images

TASKS = 40
THREADS = 4
HEARTBEAT_SECONDS = 1  # as in service_env: a worker is dead after 3 missed beats
RESUME_WITHIN_SECONDS = 30


def test_tasks_of_a_killed_worker_are_resumed_by_another_soon_and_once(redis_server, service_env, tmp_path):
    # A Redis database of its own, so the session's worker takes none of these tasks; the
    # real Flask app (test client) enqueues them. The visibility timeout stays at its default.
    url = database_url(redis_server, 3)
    env = service_env | {"LOOKALIKE_WORKER_METRICS_PORT": "0", "LOOKALIKE_REDIS_URL": url,
                         "LOOKALIKE_WORKER_THREADS": str(THREADS), "LOOKALIKE_MAX_BATCH": str(THREADS)}
    assert "LOOKALIKE_VISIBILITY_TIMEOUT_SECONDS" not in env and env["LOOKALIKE_HEARTBEAT_SECONDS"] == "1"
    settings = Settings(redis_url=url, auth=False)
    store = Store.from_settings(settings)
    client = create_app(settings).test_client()

    doomed = ManagedProcess("worker-1", [sys.executable, "-m", "worker"], env, tmp_path)
    survivor = ManagedProcess("worker-2", [sys.executable, "-m", "worker"], env, tmp_path)
    try:
        for process in (doomed, survivor):
            process.wait_until(lambda process=process: consumer_alive(store, process.process.pid), "heartbeat")
        images = list(natural_images().values())
        task_ids = []
        for number in range(TASKS):
            response = client.post("/v1/collections/crash/images",
                                   data={"image": (io.BytesIO(images[number % len(images)]), "a.jpg"),
                                         "id": f"img/{number}"})
            assert response.status_code == 202, response.json
            task_ids.append(response.json["task_id"])

        def tasks() -> list[dict]:
            return [store.get_task(task_id) for task_id in task_ids]

        doomed_name = f"{socket.gethostname()}:{doomed.process.pid}"

        def doomed_is_running_one() -> bool:
            running = [task for task in tasks() if task["state"] == "running" and task.get("worker") == doomed_name]
            return bool(running) and sum(task["state"] == "succeeded" for task in tasks()) >= 5

        doomed.wait_until(doomed_is_running_one, "a task of its own running, five finished")
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
        last_beat = store.redis.zscore(keys.CONSUMERS, doomed_name)
        heartbeat_expired_at = last_beat + 3 * HEARTBEAT_SECONDS
        # Nobody else runs a task whose lease the killed worker held: these were running at the kill.
        interrupted = [task["task_id"] for task in tasks()
                       if task["state"] == "running" and task["worker"] == doomed_name]
        assert interrupted

        def resumed() -> bool:
            return all(store.get_task(task_id)["attempts"] == 2 for task_id in interrupted)

        survivor.wait_until(resumed, "the interrupted tasks started again")
        resumed_after_expiry = time.time() - heartbeat_expired_at
        survivor.wait_until(lambda: all(task["state"] == "succeeded" for task in tasks()), "every task finished")
    finally:
        doomed.stop()
        survivor.stop()

    assert resumed_after_expiry <= RESUME_WITHIN_SECONDS, resumed_after_expiry
    finished = tasks()
    attempts = {task["task_id"]: task["attempts"] for task in finished}
    assert {task_id: attempts[task_id] for task_id in interrupted} == {task_id: 2 for task_id in interrupted}
    assert all(count == 1 for task_id, count in attempts.items() if task_id not in interrupted)
    # Each task's effect once: one stored image, and one "put" change event, per task.
    events = store.redis.xrange(keys.collection_changes("crash"))
    assert sorted(fields[b"id"].decode() for _, fields in events) == sorted(f"img/{n}" for n in range(TASKS))
    assert store.collection_info("crash")["images"] == TASKS
    assert "restored" in survivor.output() and "a worker died" in survivor.output()

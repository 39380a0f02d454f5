"""Redis faults: a restart mid-run (503 meanwhile, recovery by itself, nothing lost), a restart with tasks
in flight (each finishes, once), and a full store."""

import time
import uuid

import pytest
import requests

from shared import keys
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.queue import make_celery
from shared.queue import INDEX_QUEUE, INDEX_TASK
from shared.settings import Settings
from shared.store import Store
from tests.conftest import API_COMMAND, WORKER_COMMAND, ApiClient, ManagedProcess, natural_images

MAXMEMORY = 64 * 1024 * 1024
# How long Redis stays away in the restart tests, once the worker has noticed: longer than a forward pass,
# so that tasks finish their model work while they cannot write.
OUTAGE_SECONDS = 3
# kombu's Redis transport keeps taken, unacknowledged messages in this hash (redelivered after the visibility timeout).
KOMBU_UNACKED = "unacked"


@pytest.fixture(scope="module")
def isolated(service_env, tmp_path_factory):
    """A Redis of its own (AOF on, maxmemory, noeviction) with its own worker and API."""
    folder = tmp_path_factory.mktemp("faults")
    server = EmbeddedRedis(folder / "redis", free_port(), extra_args=("--maxmemory", str(MAXMEMORY))).start()
    port = free_port()
    env = service_env | {"LOOKALIKE_WORKER_METRICS_PORT": "0", "LOOKALIKE_REDIS_URL": server.url,
                         "LOOKALIKE_PORT": str(port), "WEB_CONCURRENCY": "1",
                         "LOOKALIKE_DATA_DIR": str(folder / "data")}
    store = Store.from_settings(Settings(redis_url=server.url))
    worker = ManagedProcess("faults-worker", WORKER_COMMAND, env, folder)
    api = ManagedProcess("faults-api", API_COMMAND, env, folder)
    try:
        worker.wait_until(lambda: store.live_workers(max_age_seconds=3), "heartbeat")
        client = ApiClient(f"http://127.0.0.1:{port}")
        api.wait_until(lambda: _status(client, "/healthz") == 200, "health")
        yield server, store, client, worker
    finally:
        api.stop()
        worker.stop()
        server.stop()


def _status(client: ApiClient, path: str) -> int | None:
    try:
        return client.http.get(client.url(path), timeout=5).status_code
    except requests.ConnectionError:
        return None


def _eventually(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.5)


def test_redis_restart_answers_503_then_recovers_with_nothing_lost(isolated):
    server, store, api, worker = isolated
    images = natural_images()
    names = ["moon", "rocket", "coins", "chelsea", "page"]
    for name in names:
        assert api.wait(api.index("restart", images[name], name))["state"] == "succeeded"

    server.stop()  # SIGTERM: Redis writes its AOF and exits
    for method, path, kwargs in [
        ("GET", "/readyz", {}),
        ("GET", "/v1/collections/restart", {}),
        ("GET", "/v1/tasks/0123456789abcdef0123456789abcdef", {}),
        ("POST", "/v1/collections/restart/images", {"files": {"image": ("a.jpg", images["horse"])}}),
        ("POST", "/v1/collections/restart/queries", {"files": {"image": ("a.jpg", images["horse"])}}),
    ]:
        response = api.http.request(method, api.url(path), timeout=30, **kwargs)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "store_unavailable"
        assert response.headers["Retry-After"] == "5"
    assert _status(api, "/healthz") == 200  # the process itself is fine

    server.start()  # same port, same folder: the AOF brings everything back
    _eventually(lambda: _status(api, "/readyz?workers=1") == 200)  # the worker's heartbeat is back too
    assert api.http.get(api.url("/v1/collections/restart")).json()["images"] == len(names)
    assert api.wait(api.index("restart", images["horse"], "horse"), timeout=90)["state"] == "succeeded"
    ids = api.query_ids("restart", images["moon"], k=10)
    assert sorted(ids) == sorted(names + ["horse"]) and ids[0] == "moon"
    assert worker.process.poll() is None


def put_events(store: Store, collection: str) -> list[str]:
    """The image ids of the collection's "put" change events, one per write that happened."""
    events = store.redis.xrange(keys.collection_changes(collection))
    return [fields[b"id"].decode() for _, fields in events if fields[b"op"] == b"put"]


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_tasks_in_flight_survive_a_redis_restart(isolated, collection, stop):
    """20 index tasks and 5 queries in flight while Redis restarts: every one succeeds, each image is
    written once, and the worker process is the one that was running before."""
    server, store, api, worker = isolated
    worker_pid = worker.process.pid
    images = list(natural_images().values())
    assert api.wait(api.index(collection, images[0], "seed"))["state"] == "succeeded"
    indexed = [api.index(collection, images[n % len(images)], f"img/{n}") for n in range(20)]
    queried = [api.query(collection, images[n], k=3) for n in range(5)]
    task_ids = [response.json()["task_id"] for response in indexed + queried]
    _eventually(lambda: any(store.get_task(task_id)["state"] == "running" for task_id in task_ids), timeout=120)

    log_before = len(worker.output())
    try:
        if stop == "SIGKILL":  # no shutdown at all: Redis comes back from what its AOF has
            server.process.kill()
            server.process.wait()
        else:
            server.stop()
        # The worker noticed (its heartbeat, every second, or its consumer), then the outage goes on:
        # tasks finishing meanwhile cannot write.
        _eventually(lambda: any(sign in worker.output()[log_before:]
                                for sign in ("heartbeat to Redis failed", "Connection to broker lost")))
        time.sleep(OUTAGE_SECONDS)
    finally:
        if server.process.poll() is not None:
            server.start()  # whatever happened, later tests find Redis up

    def finished() -> bool:
        return all(store.get_task(task_id)["state"] in ("succeeded", "failed") for task_id in task_ids)

    _eventually(finished, timeout=240)
    outcomes = [store.get_task(task_id) for task_id in task_ids]
    assert [task["state"] for task in outcomes] == ["succeeded"] * len(task_ids), \
        [task["error"] for task in outcomes if task["error"]]
    assert sorted(put_events(store, collection)) == sorted(["seed", *(f"img/{n}" for n in range(20))])  # each once
    assert all(task["result"]["matches"] for task in outcomes[20:])  # the queries found images
    assert worker.process.poll() is None and worker.process.pid == worker_pid, worker.output()[-3000:]
    assert "Unrecoverable error" not in worker.output()
    # Every message was acknowledged, those whose channel closed with the restart too: none comes back later.
    _eventually(lambda: store.redis.hlen(KOMBU_UNACKED) == 0)


def settled_memory(store) -> int:
    """Redis' used memory without the buffers a big write leaves for a moment (the client's query buffer,
    the AOF buffer): what stays once they are freed, so the store stays that full for the API's check."""
    memory = store.redis.info("memory")
    return memory["used_memory"] - memory.get("mem_clients_normal", 0) - memory.get("mem_aof_buffer", 0)


def test_a_full_store_refuses_images_and_keeps_answering_queries(isolated):
    server, store, api, _ = isolated
    images = natural_images()
    assert api.wait(api.index("full", images["moon"], "moon"))["state"] == "succeeded"
    filler = 0
    while settled_memory(store) < 0.92 * MAXMEMORY:  # Redis nearly at maxmemory
        store.redis.set(f"test:filler:{filler}", b"\0" * 1_000_000)  # small writes: a huge one is refused whole
        filler += 1
    try:
        before = store.collection_info("full")
        refused = api.index("full", images["rocket"], "rocket")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_full"
        bulk = api.http.post(api.url("/v1/collections/full/batches"), files=[("image", ("a.jpg", images["coins"]))])
        assert bulk.status_code == 503 and bulk.json()["error"]["code"] == "store_full"
        # An image the API accepted just before the store filled: the worker refuses it itself, and can
        # still write that outcome in the headroom.
        task_id = uuid.uuid4().hex
        store.submit([(task_id, "index", {"collection": "full", "image_id": "late"}, images["horse"])])
        make_celery(Settings(redis_url=server.url)).send_task(
            INDEX_TASK, kwargs={"task_id": task_id, "collection": "full", "image_id": "late", "metadata": {}},
            task_id=task_id, queue=INDEX_QUEUE)
        late = api.client.wait(task_id, timeout=120)
        assert late["state"] == "failed" and late["error"]["code"] == "store_full", late
        assert store.collection_info("full") == before
        assert api.query_ids("full", images["moon"], k=5) == ["moon"]  # queries go on
    finally:
        store.redis.delete(*(f"test:filler:{n}" for n in range(filler)))
    assert api.wait(api.index("full", images["rocket"], "rocket"))["state"] == "succeeded"  # room again

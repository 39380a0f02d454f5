"""Store and broker behind Redis Sentinel (a master, its replica, three Sentinels): the master is killed
mid-ingest, both follow the replica the Sentinels promote, and every queued task finishes, each image once."""

import signal

import pytest
import redis

from shared import keys
from shared.embedded_redis import EmbeddedSentinels, free_port
from shared.settings import Settings
from shared.store import Store
from tests.conftest import natural_images, worker_and_api

MASTER = "lookalike"
IMAGES = 16


@pytest.fixture(scope="module")
def sentinel_service(service_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentinel-service")
    sentinels = EmbeddedSentinels(folder / "sentinels", MASTER).start()
    port = free_port()
    topology = {"LOOKALIKE_REDIS_MODE": "sentinel", "LOOKALIKE_REDIS_URL": sentinels.url,
                "LOOKALIKE_REDIS_SENTINEL_MASTER": MASTER, "LOOKALIKE_BROKER_URL": sentinels.broker_url,
                "LOOKALIKE_BROKER_SENTINEL_MASTER": MASTER}
    env = service_env | topology | {"LOOKALIKE_PORT": str(port), "WEB_CONCURRENCY": "1",
                                    "LOOKALIKE_WORKER_METRICS_PORT": "0", "LOOKALIKE_DATA_DIR": str(folder / "data")}
    store = Store.from_settings(Settings(redis_mode="sentinel", redis_url=sentinels.url, redis_sentinel_master=MASTER,
                                         broker_url=sentinels.broker_url, broker_sentinel_master=MASTER))
    try:
        with worker_and_api("sentinel", env, folder, store, port) as (client, worker):
            yield sentinels, store, client, worker
    finally:
        sentinels.stop()


def test_broker_and_store_follow_a_failover_mid_ingest(sentinel_service, collection):
    sentinels, store, api, worker = sentinel_service
    images = list(natural_images().values())
    task_ids = [api.index(collection, images[n % len(images)], f"img/{n}").json()["task_id"] for n in range(IMAGES)]

    def states() -> list[str]:
        return [store.get_task(task_id)["state"] for task_id in task_ids]

    worker.wait_until(lambda: states().count("succeeded") >= 3, "three images indexed")
    old_master = next(server for server in sentinels.servers if server.port == sentinels.master_port())
    with redis.Redis(port=old_master.port) as master:  # every submission and write so far is on the replica
        assert master.execute_command("WAIT", 1, 10_000) == 1
    assert "queued" in states() or "running" in states()  # mid-ingest
    old_master.process.send_signal(signal.SIGKILL)
    old_master.process.wait()

    worker.wait_until(lambda: states() == ["succeeded"] * IMAGES, "every task finished after the failover")
    assert sentinels.master_port() != old_master.port
    events = store.redis.xrange(keys.collection_changes(collection))
    assert sorted(fields[b"id"].decode() for _, fields in events) == sorted(f"img/{n}" for n in range(IMAGES))
    assert api.wait(api.index(collection, images[0], "after"))["state"] == "succeeded"  # and it goes on
    same_photo = {"after", *(f"img/{n}" for n in range(0, IMAGES, len(images)))}
    assert api.query_ids(collection, images[0], k=1)[0] in same_photo
    assert worker.process.poll() is None

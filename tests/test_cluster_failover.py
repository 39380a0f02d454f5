"""A Redis Cluster master killed mid-ingest (3 masters, a replica each): the replica takes over its slots,
the worker follows, every task finishes with each image written once, and the search replica ends exact."""

import signal

import pytest
import redis

from shared import keys
from shared.embedded_redis import EmbeddedCluster, EmbeddedRedis, free_port
from shared.settings import Settings
from shared.store import Store
from tests.conftest import natural_images, worker_and_api

IMAGES = 16


@pytest.fixture(scope="module")
def failover_service(service_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster-failover")
    # A master silent for 2 s is failed over to its replica.
    cluster = EmbeddedCluster(folder / "cluster", masters=3, replicas=1, node_timeout_ms=2000).start()
    broker = EmbeddedRedis(folder / "broker", free_port()).start()
    port = free_port()
    env = service_env | {"LOOKALIKE_REDIS_MODE": "cluster", "LOOKALIKE_REDIS_URL": cluster.url,
                         "LOOKALIKE_BROKER_URL": broker.url, "LOOKALIKE_PORT": str(port), "WEB_CONCURRENCY": "1",
                         "LOOKALIKE_WORKER_METRICS_PORT": "0", "LOOKALIKE_DATA_DIR": str(folder / "data")}
    store = Store.from_settings(Settings(redis_mode="cluster", redis_url=cluster.url, broker_url=broker.url))
    try:
        with worker_and_api("failover", env, folder, store, port) as (client, worker):
            yield cluster, store, client, worker
    finally:
        broker.stop()
        cluster.stop()


def test_a_killed_master_is_replaced_and_no_task_is_lost(failover_service, collection):
    cluster, store, api, worker = failover_service
    images = list(natural_images().values())
    assert api.wait(api.index(collection, images[0], "seed"))["state"] == "succeeded"
    assert api.query_ids(collection, images[0], k=1) == ["seed"]  # the worker holds a replica of the collection
    task_ids = [api.index(collection, images[n % len(images)], f"img/{n}").json()["task_id"] for n in range(IMAGES)]

    def states() -> list[str]:
        return [store.get_task(task_id)["state"] for task_id in task_ids]

    worker.wait_until(lambda: states().count("succeeded") >= 3, "three images indexed")
    node = store.redis.get_node_from_key(keys.collection_vectors(collection))  # the master of the collection's slot
    master = next(server for server in cluster.nodes if server.port == node.port)
    with redis.Redis(port=master.port) as client:  # what it acknowledged so far is on its replica
        assert client.execute_command("WAIT", 1, 10_000) == 1
    assert "queued" in states() or "running" in states()  # mid-ingest
    master.process.send_signal(signal.SIGKILL)
    master.process.wait()

    worker.wait_until(lambda: states() == ["succeeded"] * IMAGES, "every task finished after the failover")
    assert store.redis.get_node_from_key(keys.collection_vectors(collection)).port != master.port
    events = store.redis.xrange(keys.collection_changes(collection))
    written = ["seed", *(f"img/{n}" for n in range(IMAGES))]
    assert sorted(fields[b"id"].decode() for _, fields in events) == sorted(written)  # each image once
    assert sorted(api.query_ids(collection, images[0], k=50)) == sorted(written)  # the replica is exact
    assert worker.process.poll() is None

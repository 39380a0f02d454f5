"""The whole service on a real 3-master Redis Cluster (the store) with its broker apart (a plain Redis):
index, query, check, delete, drop, whitening, bulk uploads and idempotent replays through the HTTP API."""

import json
import time

import pytest
import redis
import requests

from shared.embedded_redis import EmbeddedRedis, free_port
from shared.settings import Settings
from shared.store import Store
from tests.conftest import API_COMMAND, WORKER_COMMAND, ApiClient, ManagedProcess, consumer_alive, natural_images


@pytest.fixture(scope="module")
def cluster_service(redis_cluster, service_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster-service")
    broker = EmbeddedRedis(folder / "broker", free_port()).start()
    port = free_port()
    env = service_env | {
        "LOOKALIKE_REDIS_MODE": "cluster", "LOOKALIKE_REDIS_URL": redis_cluster.url,
        "LOOKALIKE_BROKER_URL": broker.url, "LOOKALIKE_PORT": str(port), "WEB_CONCURRENCY": "1",
        "LOOKALIKE_WORKER_METRICS_PORT": "0", "LOOKALIKE_DATA_DIR": str(folder / "data"),
        "LOOKALIKE_WHITENING_MIN_IMAGES": "4",
    }
    store = Store.from_settings(Settings(redis_mode="cluster", redis_url=redis_cluster.url, broker_url=broker.url))
    processes = [ManagedProcess("cluster-worker", WORKER_COMMAND, env, folder),
                 ManagedProcess("cluster-webhooks", [*WORKER_COMMAND, "--role", "webhooks"], env, folder),
                 ManagedProcess("cluster-api", API_COMMAND, env, folder)]
    try:
        worker, webhooks, api = processes
        worker.wait_until(lambda: consumer_alive(store, worker.process.pid), "heartbeat")
        webhooks.wait_until(lambda: consumer_alive(store, webhooks.process.pid), "heartbeat")
        client = ApiClient(f"http://127.0.0.1:{port}")
        api.wait_until(lambda: client.http.get(client.url("/readyz?workers=1"), timeout=10).status_code == 200,
                       "readiness")
        yield client, store, broker
    finally:
        for process in processes:
            process.stop()
        broker.stop()


def test_the_service_runs_on_a_redis_cluster_with_its_broker_apart(cluster_service, collection):
    api, store, broker = cluster_service
    images = natural_images()
    names = ["moon", "rocket", "coins", "chelsea", "astronaut"]
    for name in names:
        assert api.wait(api.index(collection, images[name], f"photos/{name}"))["state"] == "succeeded"
    assert api.query_ids(collection, images["rocket"], k=3)[0] == "photos/rocket"

    # The store's keys are spread over the masters; the broker's queues are in the other Redis.
    assert store.redis.hlen(f"lookalike:col:{{{collection}}}:vectors") == len(names)
    binding = "_kombu.binding.index"  # kombu's record of the index queue, in its broker
    assert redis.Redis.from_url(broker.url).exists(binding) == 1 and store.redis.exists(binding) == 0

    settings = {"match_threshold": 0.9, "kind": "block", "whitening": True}
    assert api.http.put(api.url(f"/v1/collections/{collection}"), json=settings).status_code == 200
    check = api.client.check(collection, images["moon"])
    assert check["verdict"] == "block" and check["best_match"]["id"] == "photos/moon"

    deadline = time.monotonic() + 120  # the first query after the setting starts learning the whitening
    while api.client.query(collection, images["coins"], k=2)["whitened"] is None:
        assert time.monotonic() < deadline, "no whitening learned"
        time.sleep(0.5)
    assert api.query_ids(collection, images["coins"], k=1) == ["photos/coins"]

    assert api.http.delete(api.url(f"/v1/collections/{collection}/images/photos/moon")).status_code == 200
    assert "photos/moon" not in api.query_ids(collection, images["moon"], k=5)
    bulk = api.http.post(api.url(f"/v1/collections/{collection}/batches"), data={"ids": json.dumps(["a", "b"])},
                         files=[("image", ("a.jpg", images["horse"])), ("image", ("b.jpg", images["coffee"]))])
    assert bulk.status_code == 202
    for item in bulk.json()["tasks"]:
        assert api.client.wait(item["task_id"], timeout=60)["state"] == "succeeded"
    assert api.http.get(api.url(bulk.json()["status_url"])).json()["counts"]["succeeded"] == 2

    replay = [api.http.post(api.url(f"/v1/collections/{collection}/images"), headers={"Idempotency-Key": "once"},
                            files={"image": ("a.jpg", images["page"])}, data={"id": "page"}) for _ in range(2)]
    assert replay[0].json()["task_id"] == replay[1].json()["task_id"] and replay[1].headers["Idempotent-Replayed"]
    assert api.client.wait(replay[0].json()["task_id"], timeout=60)["state"] == "succeeded"
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["images"] == 7  # 5 - 1 + 2 + 1

    listed = api.http.get(api.url("/v1/collections")).json()["collections"]
    assert collection in listed
    dropped = api.http.delete(api.url(f"/v1/collections/{collection}"))
    assert dropped.status_code == 200 and dropped.json()["images"] == 7
    assert api.http.get(api.url(f"/v1/collections/{collection}")).status_code == 404
    assert api.client.query(collection, images["rocket"], k=3)["matches"] == []
    assert collection not in api.http.get(api.url("/v1/collections")).json()["collections"]
    assert requests.get(api.url("/metrics"), timeout=10).status_code == 200


def test_a_collection_of_several_buckets_answers_as_one_of_a_single_bucket(cluster_service, collection):
    api, store, _ = cluster_service
    images = natural_images()
    names = ["moon", "rocket", "coins", "chelsea", "astronaut", "horse", "coffee"]
    sharded = f"{collection}-b4"
    answer = api.http.put(api.url(f"/v1/collections/{sharded}"), json={"buckets": 4})
    assert answer.status_code == 200 and answer.json()["settings"]["buckets"] == 4
    assert api.http.put(api.url(f"/v1/collections/{collection}"), json={"buckets": 1}).status_code == 200  # (verdicts)
    tasks = [api.index(name_of, images[name], f"photos/{name}") for name in names for name_of in (collection, sharded)]
    assert all(api.wait(task)["state"] == "succeeded" for task in tasks)

    # Each bucket's keys in a slot of its own, spread over the masters; nothing in the one-bucket layout.
    held = {bucket: store.redis.hlen(f"lookalike:col:{{{sharded}/{bucket}}}:vectors") for bucket in range(4)}
    assert sum(held.values()) == len(names) and sum(1 for count in held.values() if count) >= 2
    assert store.redis.exists(f"lookalike:col:{{{sharded}}}:vectors") == 0
    info = api.http.get(api.url(f"/v1/collections/{sharded}")).json()
    assert info["images"] == len(names) and info["settings"]["buckets"] == 4

    for probe in ("rocket", "coins", "page"):  # the same ranking, ids and scores, as one bucket gives
        one, four = (api.client.query(name_of, images[probe], k=len(names)) for name_of in (collection, sharded))
        assert [(match["id"], match["score"]) for match in four["matches"]] == [
            (match["id"], match["score"]) for match in one["matches"]]
    one, four = (api.client.check(name_of, images["moon"]) for name_of in (collection, sharded))
    assert four["verdict"] == one["verdict"] == "block" and four["best_match"]["id"] == "photos/moon"
    assert four["best_match"]["pdq_distance"] == one["best_match"]["pdq_distance"] == 0

    refused = api.http.put(api.url(f"/v1/collections/{sharded}"), json={"buckets": 8})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "buckets_fixed"
    assert api.http.put(api.url(f"/v1/collections/{sharded}"), json={"whitening": True}).status_code == 200
    deadline = time.monotonic() + 120  # learned from every bucket, applied to each
    while api.client.query(sharded, images["coins"], k=2)["whitened"] is None:
        assert time.monotonic() < deadline, "no whitening learned"
        time.sleep(0.5)
    assert api.query_ids(sharded, images["coins"], k=1) == ["photos/coins"]

    assert api.http.delete(api.url(f"/v1/collections/{sharded}/images/photos/moon")).status_code == 200
    assert "photos/moon" not in api.query_ids(sharded, images["moon"], k=len(names))
    listed, cursor = [], None
    while True:
        page = api.http.get(api.url(f"/v1/collections/{sharded}/images"),
                            params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        listed += page["ids"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert sorted(set(listed)) == sorted(f"photos/{name}" for name in names if name != "moon")

    dropped = api.http.delete(api.url(f"/v1/collections/{sharded}"))
    assert dropped.status_code == 200 and dropped.json()["images"] == len(names) - 1
    assert api.http.get(api.url(f"/v1/collections/{sharded}")).status_code == 404
    assert api.client.query(sharded, images["rocket"], k=3)["matches"] == []
    assert not any(store.redis.exists(f"lookalike:col:{{{sharded}/{bucket}}}:vectors") for bucket in range(4))

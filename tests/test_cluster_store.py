"""The store on a real Redis Cluster (3 masters: tests/conftest.py's ``redis_cluster``): every operation, every
Lua script and every MULTI/EXEC -- the cluster refuses one whose keys cross slots, so running them is the
check -- plus the key layout's hash tags and its table in docs/operations.md, the clients by mode, and the
migration of a store written by the layout before hash tags."""

import ast
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import redis
from flask import Flask, jsonify
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.sentinel import SentinelConnectionPool

import shared.store
from api.errors import register_error_handlers
from api.idempotency import register_idempotency
from shared import keys
from shared.apikeys import KeyStore
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.errors import LookalikeError
from shared.redis_client import connect, parse_url, redis_client
from shared.settings import Settings
from shared.store import Descriptor, Store, StoredWhitening, utc_now
from tests.conftest import REPO, store_snapshot
from tests.test_replica import (DESCRIPTOR, DIMENSION, assert_same_ranking, clustered, exact_ranking, fill,
                                learn_and_save, unit, whitened_ranking, whitening_on)
from worker.replica import Replicas

OTHER = Descriptor(model="other-model", dimension=DIMENSION, weights="other-weights")


@pytest.fixture(scope="module")
def cluster_store(redis_cluster) -> Store:
    """The store in cluster mode, its client made from settings as every process makes it."""
    store = Store.from_settings(Settings(redis_url=redis_cluster.url, redis_mode="cluster"))
    assert isinstance(store.redis, RedisCluster) and store.cluster
    return store


@pytest.fixture
def name() -> str:
    return f"cluster-{uuid.uuid4().hex[:8]}"


def slot(key: str) -> int:
    return key_slot(key.encode())


def node_of(store: Store, key: str) -> str:
    return store.redis.get_node_from_key(key).name


def collection_on_another_node(store: Store, collection: str) -> str:
    """A collection name whose keys live on another node than ``collection``'s."""
    taken = node_of(store, keys.collection_vectors(collection))
    return next(other for other in (f"{collection}-{n}" for n in range(100))
                if node_of(store, keys.collection_vectors(other)) != taken)


# --- The layout --------------------------------------------------------------------------------

PART_KEYS = [keys.collection_vectors, keys.collection_images, keys.collection_pdq, keys.collection_thumbnails,
             keys.collection_changes, keys.collection_change_seq]
COLLECTION_KEYS = [*PART_KEYS, keys.collection_descriptor, keys.collection_settings, keys.collection_whitening,
                   keys.collection_whitening_claim, keys.collection_buckets]
# shared.keys' functions that name parts of collections, not keys
PART_NAMES = ("part", "parts", "part_of", "collection_of", "bucket_of")


def test_the_keys_a_script_or_transaction_takes_together_share_a_slot():
    for collection in ("photos", "a", "banned-2", "x_y-z" * 12):
        assert len({slot(key(collection)) for key in COLLECTION_KEYS}) == 1, collection
        # a collection of several buckets: each bucket's keys in one slot, the buckets spread over slots
        parts = keys.parts(collection, 64)
        assert all(len({slot(key(part)) for key in PART_KEYS}) == 1 for part in parts)
        assert len({slot(keys.collection_vectors(part)) for part in parts}) > 50
        assert {keys.collection_of(part) for part in parts} == {collection}
    for task_id in (uuid.uuid4().hex for _ in range(5)):
        assert len({slot(key(task_id)) for key in (keys.task, keys.upload, keys.task_lease)}) == 1
    assert slot(keys.WORKERS) == slot(keys.WORKERS_INFO)
    assert len({slot(keys.CONSUMERS), *(slot(keys.consumer_held(f"host-{n}:{n}")) for n in range(20))}) == 1
    # and collections (and tasks) spread over the slots, so over the nodes
    assert len({slot(keys.collection_vectors(f"c{n}")) for n in range(50)}) > 40


# What each argument of a key function is called in docs/operations.md's table.
PLACEHOLDERS = {"collection": "<c>", "part_name": "<p>", "task_id": "<task>", "batch_id": "<batch>",
                "principal": "<key id>", "key_digest": "<sha256>", "name": "<name>", "bucket": "<bucket>"}


def key_patterns() -> set[str]:
    """Every key (and channel) name shared/keys.py makes, its variable parts written as the docs write them."""
    patterns = {value for constant, value in vars(keys).items()
                if constant.isupper() and isinstance(value, str) and constant not in ("PREFIX", "ALL_KEYS_PATTERN")}
    for function_name, function in inspect.getmembers(keys, inspect.isfunction):
        if (function.__module__ != keys.__name__ or function_name.startswith("_") or function_name.endswith("_pattern")
                or function_name in PART_NAMES):
            continue
        parameters = inspect.signature(function).parameters
        assert set(parameters) <= set(PLACEHOLDERS), f"keys.{function_name}: name its arguments in PLACEHOLDERS"
        patterns.add(function(**{parameter: PLACEHOLDERS[parameter] for parameter in parameters}))
    return patterns


def test_the_layout_table_lists_exactly_the_keys_shared_keys_makes():
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## Redis layout"):]
    section = section[:section.index("\n## ", 1)]
    documented = re.findall(r"^\| `(lookalike:[^`]+)` \|", section, re.MULTILINE)
    assert len(documented) == len(set(documented)), "a key is listed twice"
    assert set(documented) == key_patterns()


# --- Clients by mode ---------------------------------------------------------------------------

def test_a_client_is_made_by_mode():
    assert parse_url("redis://:secret@10.0.0.1:26380,10.0.0.2/2", default_port=26379) == {
        "ssl": False, "username": None, "password": "secret", "hosts": [("10.0.0.1", 26380), ("10.0.0.2", 26379)],
        "db": 2}
    assert parse_url("rediss://user:p%40ss@[::1]:7000")["hosts"] == [("::1", 7000)]
    single = redis_client(Settings(redis_url="redis://127.0.0.1:1/3"))  # (cluster mode: the cluster_store fixture)
    assert type(single) is redis.Redis and single.connection_pool.connection_kwargs["db"] == 3
    sentinel = redis_client(Settings(redis_url="redis://:pw@127.0.0.1:1,127.0.0.1:2/4", redis_mode="sentinel",
                                     redis_sentinel_master="store"))  # connects on first use
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "store"
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    with pytest.raises(ValueError, match="SENTINEL_MASTER"):
        Settings(redis_mode="sentinel")
    with pytest.raises(ValueError, match="database 0"):
        connect("redis://127.0.0.1:1/1", "cluster")


# --- Images, collections, settings, whitening --------------------------------------------------

def pdq_of(seed: int) -> bytes:
    return bytes(np.random.default_rng(seed).integers(0, 256, 32, dtype=np.uint8)) + bytes([90])


def test_images_are_saved_replaced_read_and_deleted_on_the_cluster(cluster_store, name):
    store, rng = cluster_store, np.random.default_rng(1)
    first, second = unit(rng), unit(rng)
    assert store.save_image(name, "a", first, {"n": 1}, DESCRIPTOR, pdq=pdq_of(1), thumbnail=b"jpeg-a") is False
    assert store.save_image(name, "a", second, {"n": 2}, DESCRIPTOR, pdq=None, thumbnail=b"jpeg-a2") is True
    batch = {f"b/{n}": unit(rng) for n in range(10)}
    assert store.save_images(name, [(image_id, vector, {"n": image_id}, pdq_of(n), None)
                                    for n, (image_id, vector) in enumerate(batch.items())], DESCRIPTOR) == 0
    image = store.get_image(name, "a")
    assert image["metadata"] == {"n": 2} and "pdq" not in image  # the replacement took its hash away
    assert store.get_image(name, "b/3")["pdq"] == {"hash": pdq_of(3)[:32].hex(), "quality": 90}
    assert store.get_thumbnail(name, "a") == b"jpeg-a2" and store.get_thumbnail(name, "b/1") is None
    assert store.get_metadata(name, ["b/2", "gone"]) == [{"n": "b/2"}, None]
    np.testing.assert_array_equal(store.get_vectors(name, ["a"], DIMENSION)[0], second)
    [(vector, pdq)] = store.get_vectors_and_hashes(name, ["b/4"], DIMENSION)
    np.testing.assert_array_equal(vector, batch["b/4"])
    assert pdq == pdq_of(4)
    assert store.count_vectors(name) == 11 and len(store.sample_vectors(name, 5, DIMENSION)) == 5
    assert {i for chunk in store.scan_vectors(name, DIMENSION, 4) for i, _ in chunk} == {"a", *batch}
    assert {i for chunk in store.scan_hashes(name, 4) for i, _ in chunk} == set(batch)
    cursor, ids = 0, set()
    while True:
        cursor, page = store.list_image_ids(name, cursor, 3)
        ids.update(page)
        if cursor == 0:
            break
    assert ids == {"a", *batch}

    # an index task run twice writes once
    assert store.save_image(name, "t", first, {}, DESCRIPTOR, task_id="task-1") is False
    position = store.change_position(name)
    assert store.save_image(name, "t", second, {}, DESCRIPTOR, task_id="task-1") is False
    assert store.change_position(name) == position
    np.testing.assert_array_equal(store.get_vectors(name, ["t"], DIMENSION)[0], first)

    with pytest.raises(LookalikeError) as refused:
        store.save_image(name, "x", first, {}, OTHER)
    assert refused.value.code == "descriptor_mismatch" and store.get_image(name, "x") is None

    assert store.delete_image(name, "b/0") is True and store.delete_image(name, "b/0") is False
    assert store.get_image(name, "b/0") is None and store.get_vectors(name, ["b/0"], DIMENSION) == [None]
    changes = store.changes_since(name, "0-0", 100)
    assert [(c.seq, c.op, c.image_id) for c in changes][-2:] == [(13, "put", "t"), (14, "del", "b/0")]
    assert [c.seq for c in changes] == list(range(1, 15)) and store.change_position(name)[0] == 14


def test_drops_settings_and_the_registry_on_the_cluster(cluster_store, redis_cluster, name):
    store, rng = cluster_store, np.random.default_rng(2)
    settings = {"match_threshold": 0.8, "pdq_max_distance": 20, "kind": "allow", "whitening": False}
    store.put_collection_settings(name, settings)
    assert name in store.list_collections() and store.collection_info(name)["images"] == 0
    assert store.collection_info(name)["settings"]["kind"] == "allow"
    fill(store, name, clustered(5, seed=3))
    assert store.collection_info(name)["images"] == 5 and store.collection_sizes()[name] == 5
    assert store.drop_collection(name) == 5
    assert store.collection_info(name) is None and name not in store.list_collections()
    assert name not in store.collection_sizes()
    assert [c.op for c in store.changes_since(name, "0-0", 100)][-1] == "drop"
    left = {key.decode() for key in store.redis.scan_iter(keys.collection_keys_pattern(name))}
    assert left == {keys.collection_changes(name), keys.collection_change_seq(name)}

    # the registry may name a collection that is gone: listings and lookups pass over it
    ghost = f"{name}-ghost"
    store.redis.sadd(keys.COLLECTIONS, ghost)
    assert ghost not in store.list_collections() and store.collection_info(ghost) is None

    # a save that lands between a drop's script and its registry update keeps its collection registered
    store.save_image(name, "before", unit(rng), {}, DESCRIPTOR)
    racing = Store.from_settings(Settings(redis_url=redis_cluster.url, redis_mode="cluster"))  # another process
    real_srem = store.redis.srem

    def srem_after_a_racing_save(*args):
        racing.save_image(name, "raced", unit(rng), {}, DESCRIPTOR)  # its script and its SADD, all before the SREM
        return real_srem(*args)

    store.redis.srem = srem_after_a_racing_save
    try:
        assert store.drop_collection(name) == 1
    finally:
        del store.redis.srem
    assert name in store.list_collections() and store.collection_info(name)["images"] == 1
    assert store.get_image(name, "raced") is not None and store.get_image(name, "before") is None


def test_whitening_on_the_cluster_and_a_replica_that_follows_it(cluster_store, name):
    store = cluster_store
    fill(store, name, clustered(60, seed=20))
    replicas = Replicas(store, DIMENSION)
    query = clustered(1, seed=21)[0]
    assert_same_ranking(replicas.search(name, query, 10).matches, exact_ranking(store, name, query)[:10])

    assert store.claim_whitening(name, 60) and not store.claim_whitening(name, 60)
    assert not store.save_whitening(name, StoredWhitening(np.zeros(8), np.eye(8), 60, 60, utc_now()),
                                    DESCRIPTOR.model)  # refused: the collection does not want whitening
    whitening_on(store, name)
    whitening = learn_and_save(store, name)
    store.release_whitening_claim(name)
    assert store.claim_whitening(name, 60)
    store.release_whitening_claim(name)
    assert store.get_whitening(name).learned_from == 60
    assert store.collection_info(name)["whitening"]["learned_from"] == 60
    replicas.wait_for_builds()
    replicas.search(name, query, 10)  # sees the "whiten" event, reloads in the background
    replicas.wait_for_builds()
    found = replicas.search(name, query, 10)
    assert found.whitening["learned_from"] == 60
    assert_same_ranking(found.matches, whitened_ranking(store, name, whitening, query)[:10])

    whitening_on(store, name, False)  # forgets the learned whitening, with a "whiten" event
    assert store.get_whitening(name) is None and store.collection_info(name)["whitening"] is None
    assert [c.op for c in store.changes_since(name, "0-0", 1000)][-2:] == ["whiten", "whiten"]
    replicas.search(name, query, 10)
    replicas.wait_for_builds()
    assert replicas.search(name, query, 10).whitening is None


def test_a_replica_follows_a_collection_on_the_cluster(cluster_store, name):
    store, rng = cluster_store, np.random.default_rng(4)
    replicas = Replicas(store, DIMENSION)
    for n in range(30):
        store.save_image(name, f"img/{n}", unit(rng), {}, DESCRIPTOR, pdq=pdq_of(n))
    query = unit(rng)
    assert_same_ranking(replicas.search(name, query, 5).matches, exact_ranking(store, name, query)[:5])
    store.save_image(name, "img/new", query, {}, DESCRIPTOR)
    store.delete_image(name, "img/3")
    store.save_image(name, "img/4", -query, {}, DESCRIPTOR)  # replaced
    found = replicas.search(name, query, 40)
    assert found.matches[0][0] == "img/new" and found.matches[-1][0] == "img/4"
    assert "img/3" not in dict(found.matches)
    assert_same_ranking(found.matches, exact_ranking(store, name, query))
    assert replicas.search_hashes(name, pdq_of(7)[:32], 0) == [("img/7", 0)]  # the hashes came with it
    store.drop_collection(name)
    assert replicas.search(name, query, 10).matches == []


# --- Tasks, uploads, batches ---------------------------------------------------------------------

def submit(store: Store, count: int, *, uploads: bool = True, every_node: bool = False) -> list[str]:
    """``count`` index tasks submitted at once (``every_node``: at least ``count``, until their keys are on every
    node: random ids leave one out now and then)."""
    task_ids = [uuid.uuid4().hex for _ in range(count)]
    masters = len(store.redis.get_primaries())
    while every_node and len({node_of(store, keys.task(task_id)) for task_id in task_ids}) < masters:
        task_ids.append(uuid.uuid4().hex)
    store.submit([(task_id, "index", {"collection": "c", "image_id": f"i{n}"},
                   f"bytes of {task_id}".encode() if uploads and n % 3 else None)
                  for n, task_id in enumerate(task_ids)])
    return task_ids


def test_tasks_are_submitted_claimed_renewed_and_finished_on_the_cluster(cluster_store):
    store = cluster_store
    task_ids = submit(store, 24, every_node=True)
    assert len({node_of(store, keys.task(task_id)) for task_id in task_ids}) == 3  # one submission, every node
    for n, task_id in enumerate(task_ids):
        record = store.get_task(task_id)
        assert record["state"] == "queued" and record["image_id"] == f"i{n}" and record["task_id"] == task_id
        assert store.get_upload(task_id) == (f"bytes of {task_id}".encode() if n % 3 else None)
        assert 0 < store.redis.ttl(keys.task(task_id)) <= store.task_ttl
    assert store.task_outcomes(task_ids[:2] + ["expired"]) == [("queued", None), ("queued", None), (None, None)]

    first, second = task_ids[1], task_ids[2]
    assert store.claim_task(first, "run-1", "w1", 30) == "claimed"
    assert store.claim_task(first, "run-2", "w2", 30) == "busy"
    assert store.claim_task(second, "run-3", "w1", 30) == "claimed"
    assert store.claim_task("never-submitted", "run-9", "w1", 30) == "missing"
    assert store.renew_leases({first: "run-1", second: "run-3", task_ids[3]: "run-4"}, 30) == [task_ids[3]]
    assert store.holds_lease(first, "run-1") and not store.holds_lease(first, "run-2")
    store.update_callback(first, {"url": "http://127.0.0.1/x", "state": "pending", "attempts": []})
    assert store.get_task(first)["callback"]["state"] == "pending" and store.get_task(first)["attempts"] == 1

    assert store.finish_task(first, "succeeded", result={"ok": 1}, execution="run-2") is False  # not the holder
    assert store.finish_task(first, "succeeded", result={"ok": 1}, execution="run-1") is True
    record = store.get_task(first)
    assert record["state"] == "succeeded" and record["result"] == {"ok": 1}
    assert store.get_upload(first) is None and not store.redis.exists(keys.task_lease(first))
    assert store.claim_task(first, "run-5", "w2", 30) == "finished"
    assert store.finish_task(second, "failed", error={"code": "x"}) is True
    assert store.task_outcomes([first, second]) == [("succeeded", None), ("failed", {"code": "x"})]

    store.discard_submissions(task_ids[3:])  # spread over every node
    assert all(store.get_task(task_id) is None and store.get_upload(task_id) is None for task_id in task_ids[3:])

    batch_id = uuid.uuid4().hex
    store.save_batch(batch_id, {"collection": "c", "items": [{"task_id": first}]})
    assert store.get_batch(batch_id) == {"collection": "c", "items": [{"task_id": first}]}
    assert store.get_batch("none") is None


def test_a_failed_submission_leaves_no_task_behind(cluster_store, monkeypatch):
    store = cluster_store
    task_ids = [uuid.uuid4().hex for _ in range(6)]
    real = store._run_scripts

    def half_then_fail(calls):
        real(calls[:3])
        raise redis.exceptions.ConnectionError("a node went away")

    monkeypatch.setattr(store, "_run_scripts", half_then_fail)
    with pytest.raises(redis.exceptions.ConnectionError):
        store.submit([(task_id, "query", {}, b"upload") for task_id in task_ids])
    assert all(store.get_task(task_id) is None and store.get_upload(task_id) is None for task_id in task_ids)


def test_a_waiting_poll_is_woken_by_pubsub_on_the_cluster(cluster_store, monkeypatch):
    """wait_for_task subscribes to the task's channel; the finish script's PUBLISH must reach it. The poll's own
    re-read every second is stretched to a minute here, so only the message can wake it in time."""
    store = cluster_store
    [task_id] = submit(store, 1)
    channel = keys.task_done_channel(task_id)
    received, subscribed = [], threading.Event()
    real_pubsub = store.redis.pubsub

    def spied_pubsub(**_options):
        pubsub = real_pubsub()  # its subscription confirmed here, before the poll waits for the message
        real_get_message = pubsub.get_message

        def get_message(timeout=0.0, **more):
            while (message := real_get_message(timeout=60, **more)) is not None and message["type"] == "subscribe":
                subscribed.set()  # the node has the subscription: from now on a PUBLISH reaches it
            if message is not None:
                received.append(message)
            return message

        pubsub.get_message = get_message
        return pubsub

    monkeypatch.setattr(store.redis, "pubsub", spied_pubsub)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(store.wait_for_task(task_id, timeout=120)))
    started = time.monotonic()
    waiter.start()
    assert subscribed.wait(30), "the poll never subscribed"
    assert store.finish_task(task_id, "succeeded", result={"matches": []})
    waiter.join(90)
    assert not waiter.is_alive() and time.monotonic() - started < 60
    assert answers[0]["state"] == "succeeded"
    assert [(m["channel"], m["data"]) for m in received] == [(channel.encode(), b'"succeeded"')]


# --- Worker processes, API keys, idempotency records ----------------------------------------------

def test_heartbeats_consumers_and_held_messages_on_the_cluster(cluster_store):
    store = cluster_store
    worker, other = f"host:{uuid.uuid4().hex[:6]}", f"host:{uuid.uuid4().hex[:6]}"
    store.heartbeat(worker, {"model": "m", "weights": "w"})
    assert {"model": "m", "weights": "w", "name": worker} in store.live_workers(60)
    store.remove_worker(worker)
    assert worker not in {w["name"] for w in store.live_workers(60)}

    store.beat_consumer(worker, {"1", "2"}, 30)
    store.beat_consumer(other, {"3"}, 30)
    assert {"1", "2", "3"} <= store.held_by_live_consumers(60)
    store.beat_consumer(worker, {"2"}, 30)  # settled one
    held = store.held_by_live_consumers(60)
    assert "1" not in held and {"2", "3"} <= held
    store.forget_consumer(worker)
    store.forget_consumer(other)
    held = store.held_by_live_consumers(60)
    assert not {"1", "2", "3"} & held
    assert store.redis.zscore(keys.CONSUMERS, worker) is None
    assert abs(store.now() - time.time()) < 60
    store.redis.delete(keys.REAPER)  # (a worker of an earlier test on this cluster may have held it a moment ago)
    assert store.claim_reaper(worker, 5) and not store.claim_reaper(other, 5)
    store.redis.delete(keys.REAPER)


def test_api_keys_on_the_cluster(cluster_store):
    key_store = KeyStore(cluster_store.redis)
    token, record = key_store.create("cluster", ["query"], ["photos"])
    assert key_store.authenticate(f"Bearer {token}").key_id == record.key_id
    secret = key_store.rotate_webhook_secret(record.key_id)  # read, change, write under WATCH
    assert secret and key_store.webhook_secret(record.key_id) == secret
    assert key_store.revoke(record.key_id)
    with pytest.raises(LookalikeError):
        key_store.authenticate(f"Bearer {token}")
    assert record.key_id in {k.key_id for k in key_store.list()}
    cluster_store.redis.hdel(keys.API_KEYS, record.key_id)


def test_idempotency_records_on_the_cluster(cluster_store):
    """api/idempotency.py's hooks, in a bare app whose one POST route counts its calls, against the cluster."""
    app = Flask(__name__)
    app.extensions["lookalike"] = {"store": cluster_store, "settings": Settings(idempotency_ttl_seconds=60)}
    calls = []

    @app.post("/things")
    def make_thing():
        calls.append(1)
        return jsonify({"thing": len(calls)}), 201

    register_idempotency(app)
    register_error_handlers(app)
    client, key = app.test_client(), f"retry-{uuid.uuid4().hex}"
    first = client.post("/things", json={"a": 1}, headers={"Idempotency-Key": key})
    again = client.post("/things", json={"a": 1}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201 and again.json == first.json == {"thing": 1}
    assert again.headers["Idempotent-Replayed"] == "true" and len(calls) == 1
    assert client.post("/things", json={"a": 2}, headers={"Idempotency-Key": key}).status_code == 422
    record_key = keys.idempotency("anonymous", hashlib.sha256(key.encode()).hexdigest())
    assert json.loads(cluster_store.redis.get(record_key))["state"] == "done"


def test_the_store_full_check_asks_the_node_of_the_collection(cluster_store, name):
    store = cluster_store
    other = collection_on_another_node(store, name)
    node = store.redis.get_node_from_key(keys.collection_vectors(name))
    used = store.redis.info("memory", target_nodes=node)["used_memory"]
    store.redis.config_set("maxmemory", int(used * 1.5), target_nodes=node)
    try:
        with pytest.raises(LookalikeError) as full:
            store.check_room_for_images(0.5, name)
        assert full.value.code == "store_full"
        store.check_room_for_images(0.5, other)  # another node has room
        with pytest.raises(LookalikeError):
            store.check_room_for_images(0.5)  # no collection named: any full node refuses
    finally:
        store.redis.config_set("maxmemory", 0, target_nodes=node)
    store.check_room_for_images(0.5, name)


# --- Every script and every transaction ------------------------------------------------------------

def transactional_functions() -> set[str]:
    """The functions of shared/store.py and shared/apikeys.py that open a MULTI/EXEC pipeline, read from their
    source, so that one added later is found here without being named."""
    found = set()
    for module in ("store", "apikeys"):
        tree = ast.parse((REPO / "shared" / f"{module}.py").read_text())
        for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
            for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
                if (isinstance(call.func, ast.Attribute) and call.func.attr == "pipeline"
                        and any(k.arg == "transaction" and getattr(k.value, "value", None) is True
                                for k in call.keywords)):
                    found.add(function.name)
    return found


def test_every_script_and_transaction_runs_on_the_cluster(cluster_store, name, monkeypatch):
    """One pass through every store operation that runs a Lua script or a MULTI/EXEC, each checked to have run on
    the cluster (which refuses cross-slot ones): every script in shared/store.py by its SHA, every function that
    opens a transaction by name."""
    store = cluster_store
    scripts_run, transactions_run = set(), set()
    real_execute, real_pipeline_execute = RedisCluster.execute_command, redis.cluster.ClusterPipeline.execute_command
    real_pipeline = RedisCluster.pipeline

    def execute_command(self, *args, **options):
        if args[0] == "EVALSHA":
            scripts_run.add(args[1])
        return real_execute(self, *args, **options)

    def pipeline_execute_command(self, *args, **options):
        if args[0] == "EVALSHA":
            scripts_run.add(args[1])
        return real_pipeline_execute(self, *args, **options)

    def pipeline(self, transaction=None, shard_hint=None):
        if transaction:
            transactions_run.add(sys._getframe(1).f_code.co_name)
        return real_pipeline(self, transaction, shard_hint)

    monkeypatch.setattr(RedisCluster, "execute_command", execute_command)
    monkeypatch.setattr(redis.cluster.ClusterPipeline, "execute_command", pipeline_execute_command)
    monkeypatch.setattr(RedisCluster, "pipeline", pipeline)

    rng = np.random.default_rng(9)
    store.put_collection_settings(name, {"kind": "block", "whitening": True})  # settings script
    store.save_images(name, [(f"i{n}", unit(rng), {}, pdq_of(n), b"t") for n in range(12)], DESCRIPTOR)  # save
    store.save_whitening(name, StoredWhitening(np.zeros(8), np.eye(8), 12, 12, utc_now()), DESCRIPTOR.model)
    store.delete_image(name, "i0")  # delete script
    store.get_image(name, "i1"), store.change_position(name), store.get_vectors_and_hashes(name, ["i2"], DIMENSION)
    store.collection_info(name)
    store.drop_collection(name)  # drop script
    sharded = f"{name}-sharded"  # a collection of four buckets: each bucket's scripts in its own slot
    store.put_collection_settings(sharded, {"kind": "block", "whitening": True, "buckets": 4})
    store.save_images(sharded, [(f"i{n}", unit(rng), {"n": n}, pdq_of(n), b"t") for n in range(12)],
                      DESCRIPTOR)  # claim script, then the save script per bucket
    store.save_whitening(sharded, StoredWhitening(np.zeros(8), np.eye(8), 12, 12, utc_now()),
                         DESCRIPTOR.model)  # then an event in each bucket's stream
    assert all(store.changes_since(part, "0-0", 100)[-1].op == "whiten" for part in store.parts(sharded))
    store.delete_image(sharded, "i0")
    assert store.get_metadata(sharded, ["i1", "i0", "i11"]) == [{"n": 1}, None, {"n": 11}]
    assert store.collection_info(sharded)["images"] == 11 and store.collection_sizes()[sharded] == 11
    store.start_move(sharded, 2, "g2")  # a bucket moving: committed once its new group holds it
    assert store.mark_ready(sharded, 2, "p1") == {"p1"} and store.commit_move(sharded, 2, "g2")  # commit script
    assert store.placement_overrides(sharded) == {2: "g2"} and store.moves(sharded) == {}
    assert store.drop_collection(sharded) == 11
    task_ids = submit(store, 6)  # submit script, one per task
    store.claim_task(task_ids[0], "run", "w", 30)  # claim script
    store.renew_leases({task_ids[0]: "run"}, 30)  # renew script
    store.release_lease(task_ids[0], "run")  # release script (a task passed on to its search group)
    store.claim_task(task_ids[0], "run", "w", 30)
    store.update_callback(task_ids[0], {"state": "pending"})
    store.finish_task(task_ids[0], "succeeded", execution="run")  # finish script
    store.expect_answers(task_ids[1], {"g1": [0], "g2": [1]}, 30)  # a scattered search: answers by its record
    assert store.gather_answer(task_ids[1], "g1", {"cnn": []}, 2) is None  # gather script
    assert store.missing_answers(task_ids[1], 2) == ["g1"]  # give-up script
    assert store.gather_answer(task_ids[1], "g2", {"cnn": []}, 2) == {"g1": {"cnn": []}, "g2": {"cnn": []}}
    store.discard_submissions(task_ids)
    store.heartbeat("tour", {}), store.remove_worker("tour")
    store.beat_consumer("tour", {"7"}, 5), store.forget_consumer("tour")
    key_store = KeyStore(store.redis)
    _, record = key_store.create("tour", ["read"], None)
    key_store.revoke(record.key_id)
    store.redis.hdel(keys.API_KEYS, record.key_id)

    every_script = {hashlib.sha1(value.encode()).hexdigest() for constant, value in vars(shared.store).items()
                    if constant.endswith("_LUA")}
    assert len(every_script) == 15
    assert scripts_run == every_script
    assert transactions_run == transactional_functions()


def test_a_node_that_does_not_know_a_script_gets_it_and_runs_each_call_once(cluster_store, name):
    """A new or promoted node knows no script: its pipelined calls answer NOSCRIPT, run nothing, and are sent again."""
    store, rng = cluster_store, np.random.default_rng(11)
    store.redis.execute_command("SCRIPT FLUSH")  # on every primary
    assert store.save_images(name, [(f"i{n}", unit(rng), {}, None, None) for n in range(6)], DESCRIPTOR) == 0
    assert store.change_position(name)[0] == 6 and len(store.changes_since(name, "0-0", 100)) == 6
    task_ids = submit(store, 9)  # tasks on every node
    assert all(store.get_task(task_id)["state"] == "queued" for task_id in task_ids)
    store.discard_submissions(task_ids)


# --- Migrating a store written by the layout before hash tags ------------------------------------------

@pytest.fixture
def old_server(tmp_path):
    """A private single Redis for a store written the old way."""
    with EmbeddedRedis(tmp_path / "old", free_port()) as server:
        yield server


def write_the_old_layout(client: redis.Redis, rng) -> dict:
    """What the code before hash tags wrote (git show 3b4703b:shared/store.py), with plain commands."""
    old = "lookalike"
    vectors = {"cats/1": unit(rng), "cats/2": unit(rng)}
    for number, (image_id, vector) in enumerate(vectors.items(), start=1):
        client.hset(f"{old}:col:photos:vectors", image_id, vector.astype("<f4").tobytes())
        client.hset(f"{old}:col:photos:images", image_id,
                    json.dumps({"metadata": {"n": number}, "indexed_at": "2026-01-01T00:00:00.000Z"}))
        client.incr(f"{old}:col:photos:seq")
        client.xadd(f"{old}:col:photos:changes", {"seq": number, "op": "put", "id": image_id})
    client.hset(f"{old}:col:photos:pdq", "cats/1", pdq_of(1))
    client.hset(f"{old}:col:photos:thumbs", "cats/1", b"jpeg")
    client.hset(f"{old}:col:photos:descriptor", mapping=DESCRIPTOR.to_mapping())
    client.set(f"{old}:col:photos:settings", json.dumps({"kind": "block", "whitening": True}))
    client.hset(f"{old}:col:photos:whitening", mapping={
        "mean": np.zeros(8, "<f4").tobytes(), "projection": np.eye(8, dtype="<f4").tobytes(), "input_dimension": 8,
        "dimensions": 8, "learned_from": 2, "collection_size": 2, "learned_at": "2026-01-01T00:00:00.000Z"})
    client.set(f"{old}:col:photos:whitening:claim", b"1", ex=600)
    client.set(f"{old}:col:settings-only:settings", json.dumps({"kind": "allow"}))
    client.sadd(f"{old}:collections", "photos", "settings-only")

    queued, running, done = (uuid.uuid4().hex for _ in range(3))
    for task_id, state in ((queued, "queued"), (running, "running"), (done, "succeeded")):
        client.hset(f"{old}:task:{task_id}", mapping={"task_id": json.dumps(task_id), "kind": '"index"',
                                                      "state": json.dumps(state), "collection": '"photos"'})
        client.expire(f"{old}:task:{task_id}", 3600)
    client.set(f"{old}:upload:{queued}", b"queued bytes", ex=600)
    client.set(f"{old}:upload:{running}", b"running bytes", ex=600)
    client.set(f"{old}:task:{running}:lease", "execution-1", px=60_000)

    client.zadd(f"{old}:workers", {"host:1": time.time()})
    client.hset(f"{old}:workers:info", "host:1", "{}")
    client.zadd(f"{old}:consumers", {"host:1": time.time()})
    client.sadd(f"{old}:consumer:host:1:held", "tag-1")
    client.set(f"{old}:batch:b1", json.dumps({"collection": "photos", "items": []}), ex=3600)
    client.set(f"{old}:idem:anonymous:{'0' * 64}", json.dumps({"state": "done"}), ex=3600)
    client.hset(f"{old}:apikeys", "k1", "{}")
    return {"vectors": vectors, "queued": queued, "running": running, "done": done}


def migrate(server: EmbeddedRedis, *args: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    return subprocess.run([sys.executable, "-m", "shared.migrate_keys", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env | {"LOOKALIKE_REDIS_URL": server.url})


def test_a_store_written_by_the_old_layout_is_migrated_and_read_back(old_server):
    client = redis.Redis.from_url(old_server.url)
    written = write_the_old_layout(client, np.random.default_rng(5))
    before = {key: client.type(key) for key in client.scan_iter("*")}

    dry = migrate(old_server, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move 2 (11 keys)" in dry.stdout and {key: client.type(key) for key in client.scan_iter("*")} == before

    done = migrate(old_server)
    assert done.returncode == 0, done.stderr
    assert "collections: moved 2 (11 keys)" in done.stdout
    assert "tasks: moved 3 (6 keys: records, leases, uploads)" in done.stdout
    assert "dropped 4 keys" in done.stdout

    store = Store(client, 3600, 3600)
    assert store.list_collections() == ["photos", "settings-only"]
    info = store.collection_info("photos")
    assert info["images"] == 2 and info["model"] == DESCRIPTOR.model and info["settings"]["kind"] == "block"
    assert info["whitening"]["learned_from"] == 2
    assert store.collection_info("settings-only")["settings"]["kind"] == "allow"
    assert store.get_image("photos", "cats/1")["pdq"]["hash"] == pdq_of(1)[:32].hex()
    assert store.get_image("photos", "cats/2")["metadata"] == {"n": 2}
    assert store.get_thumbnail("photos", "cats/1") == b"jpeg"
    for image_id, vector in written["vectors"].items():
        np.testing.assert_array_equal(store.get_vectors("photos", [image_id], DIMENSION)[0], vector)
    assert store.change_position("photos")[0] == 2
    assert [(c.seq, c.op) for c in store.changes_since("photos", "0-0", 10)] == [(1, "put"), (2, "put")]
    assert not store.claim_whitening("photos", 60)  # the claim moved, with its TTL
    replicas = Replicas(store, DIMENSION)
    assert {i for i, _ in replicas.search("photos", written["vectors"]["cats/1"], 5).matches} == {"cats/1", "cats/2"}
    store.save_image("photos", "cats/3", unit(np.random.default_rng(6)), {}, DESCRIPTOR)
    assert store.change_position("photos")[0] == 3  # the change counter carried on
    assert {i for i, _ in replicas.search("photos", written["vectors"]["cats/1"], 5).matches} == {
        "cats/1", "cats/2", "cats/3"}

    assert store.get_task(written["queued"])["state"] == "queued"
    assert store.get_upload(written["queued"]) == b"queued bytes" and 0 < client.ttl(keys.upload(written["queued"]))
    assert 0 < client.ttl(keys.task(written["done"])) <= 3600
    assert store.holds_lease(written["running"], "execution-1")
    assert store.claim_task(written["running"], "execution-2", "w", 30) == "busy"
    assert store.finish_task(written["running"], "succeeded", execution="execution-1")
    assert store.get_upload(written["running"]) is None
    assert store.get_batch("b1") == {"collection": "photos", "items": []}
    assert client.hget(keys.API_KEYS, "k1") == b"{}"
    assert client.exists(keys.idempotency("anonymous", "0" * 64))

    # every key left has a name of today's layout
    today = [re.compile(re.sub(r"<[a-z0-9 ]+>", lambda _: "[^:{}]+", re.escape(pattern).replace(r"\<", "<")
                               .replace(r"\>", ">").replace(r"\ ", " "))) for pattern in key_patterns()]
    left = {key.decode() for key in client.scan_iter("*")}
    assert [key for key in left if not any(pattern.fullmatch(key) for pattern in today)] == []

    snapshot = store_snapshot(client)
    again = migrate(old_server)
    assert again.returncode == 0, again.stderr
    assert "nothing under an old name" in again.stdout and store_snapshot(client) == snapshot


def test_the_migration_moves_nothing_of_a_collection_whose_new_name_is_taken(old_server):
    client = redis.Redis.from_url(old_server.url)
    client.hset("lookalike:col:photos:vectors", "a", b"x" * 32)
    client.set("lookalike:col:photos:seq", 5)
    client.set(keys.collection_change_seq("photos"), 1)  # written by the new version meanwhile
    client.hset("lookalike:col:other:vectors", "b", b"y" * 32)
    done = migrate(old_server)
    assert done.returncode == 1
    assert "NOT moved, new name already taken (1" in done.stdout and keys.collection_change_seq("photos") in done.stdout
    assert client.exists("lookalike:col:photos:vectors", "lookalike:col:photos:seq") == 2  # its collection stays
    assert client.get(keys.collection_change_seq("photos")) == b"1"
    assert client.hget(keys.collection_vectors("other"), "b") == b"y" * 32  # the others moved

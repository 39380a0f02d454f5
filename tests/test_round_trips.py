"""What one index task costs Redis: its round trips and commands, counted on a real server (issue 17, part 1).

An index task runs here in-process (``worker.tasks.index_image`` called directly, its model a stand-in) against a
database of the session's redis-server that nothing else uses (11). Round trips are counted where the client
sends them (one per request written to the socket: a pipeline is one); the commands as the server ran them,
with MONITOR. The guarantees the fewer round trips must keep -- a lost lease writes nothing, a redelivered
task writes nothing, a server that forgot its scripts runs each call once, a collection of several buckets
is still written by buckets -- are checked by their effects.
"""

import threading
import uuid
from collections import Counter

import cv2
import numpy as np
import pytest
import redis

from shared import keys
from shared.collection_settings import DEFAULT_COLLECTION_SETTINGS
from shared.errors import LookalikeError
from shared.settings import Settings
from shared.store import Descriptor, Store
from tests.conftest import database_url, emptied_afterwards
from worker import tasks

DB = 11
DESCRIPTOR = Descriptor("stand-in", 8, "none")
# One index task of a new image into a collection of one bucket, on one server: the claim with the task's record
# and upload; the room left with the lease, right before the write; the write with the collection's registration
# and its info (for the whitening's due check); the outcome.
INDEX_ROUND_TRIPS = 4
INDEX_COMMANDS = ["EVALSHA", "HGETALL",  # claim (which reads the upload), record
                  "INFO", "GET",  # room, lease
                  "EVALSHA", "SADD", "HGETALL", "GET", "HMGET", "GET", "HLEN",  # write, registry, collection info
                  "EVALSHA"]  # outcome


class StandInExtractor:
    descriptor = DESCRIPTOR

    class weights:  # noqa: N801 - as FeatureExtractor.weights reads
        is_random = True

    def __init__(self, during=None):
        self.during = during

    def extract(self, images):
        if self.during is not None:
            self.during()
        return [np.ones(DESCRIPTOR.dimension, np.float32) / np.sqrt(DESCRIPTOR.dimension) for _ in images]


@pytest.fixture
def store(redis_server):
    with emptied_afterwards(database_url(redis_server, DB)) as url:
        yield Store.from_settings(Settings(redis_url=url))


@pytest.fixture
def worker_with(store, monkeypatch):
    """Index tasks run here, in this thread, against ``store``; returns a setter for the stand-in model."""
    monkeypatch.setattr(tasks, "get_store", lambda: store)
    monkeypatch.setattr(tasks, "schedule_webhook", lambda task_id: None)

    def use(extractor: StandInExtractor) -> None:
        monkeypatch.setattr(tasks, "get_extractor", lambda: extractor)

    use(StandInExtractor())
    return use


@pytest.fixture
def round_trips(store, monkeypatch):
    """Requests this thread sends to the store's server (a pipeline is one), counted from when it is called."""
    counted = Counter()
    thread, pool = threading.current_thread(), store.redis.connection_pool
    real = redis.connection.AbstractConnection.send_packed_command

    def counting(connection, command, check_health=True):
        if threading.current_thread() is thread and connection in pool._in_use_connections:
            counted["sent"] += 1
        return real(connection, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return counted


class Monitor:
    """The commands the server runs for clients of database ``DB`` (not those inside scripts), by MONITOR."""

    def __init__(self, store: Store):
        self.client = redis.Redis(connection_pool=redis.ConnectionPool(
            **store.redis.connection_pool.connection_kwargs))
        self.marker = f"end-{uuid.uuid4().hex}"
        self.seen: list[dict] = []

    def __enter__(self):
        self.monitor = self.client.monitor().__enter__()
        self.own_port = self.client.client_info()["addr"].rsplit(":", 1)[1]  # (its commands are left out)
        return self

    def __exit__(self, *exc):
        self.client.echo(self.marker)
        while True:
            command = self.monitor.next_command()
            if self.marker in command["command"]:
                break
            if command["db"] == DB and command["client_type"] != "lua" and command["client_port"] != self.own_port:
                self.seen.append(command)
        self.monitor.__exit__(*exc)
        self.client.close()

    def names(self) -> list[str]:
        return [command["command"].split()[0].upper() for command in self.seen]


def jpeg() -> bytes:
    pixels = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def submitted(store: Store, collection: str, image_id: str) -> str:
    task_id = uuid.uuid4().hex
    store.submit([(task_id, "index", {"collection": collection, "image_id": image_id}, jpeg())])
    return task_id


def test_an_index_task_costs_four_round_trips_and_reads_nothing_twice(store, worker_with, round_trips):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    tasks.index_image(submitted(store, collection, "warm"), collection, "warm", {})  # the server learns the scripts
    task_id = submitted(store, collection, "a")
    round_trips.clear()
    with Monitor(store) as monitor:
        tasks.index_image(task_id, collection, "a", {"n": 1})
    assert round_trips["sent"] == INDEX_ROUND_TRIPS
    assert monitor.names() == INDEX_COMMANDS
    record = store.get_task(task_id)
    assert record["state"] == "succeeded" and record["attempts"] == 1
    assert record["result"]["image_id"] == "a" and record["result"]["replaced"] is False
    assert record["result"]["write_token"]
    assert store.get_image(collection, "a")["metadata"] == {"n": 1} and store.get_upload(task_id) is None
    assert not store.redis.exists(keys.task_lease(task_id)) and collection in store.list_collections()
    assert store.collection_info(collection)["images"] == 2 and store.buckets(collection) == 1


def test_a_redelivered_task_reads_once_and_writes_nothing(store, worker_with, round_trips):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    task_id = submitted(store, collection, "a")
    tasks.index_image(task_id, collection, "a", {})
    before = store.get_task(task_id)
    round_trips.clear()
    with Monitor(store) as monitor:
        tasks.index_image(task_id, collection, "a", {})  # the message delivered again
    assert round_trips["sent"] == 1 and monitor.names() == ["EVALSHA", "HGETALL"]
    assert store.get_task(task_id) == before and store.change_position(collection)[0] == 1


def test_an_execution_that_lost_its_lease_before_writing_writes_nothing(store, worker_with):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    task_id = submitted(store, collection, "a")
    # While the model runs, the lease lapses and another execution claims the task.
    worker_with(StandInExtractor(during=lambda: store.redis.set(keys.task_lease(task_id), "another", px=30_000)))
    tasks.index_image(task_id, collection, "a", {})
    assert store.get_image(collection, "a") is None and store.collection_info(collection) is None
    record = store.get_task(task_id)
    assert record["state"] == "running" and store.get_upload(task_id) is not None  # the other one finishes it


def test_a_full_store_refuses_the_image_with_the_lease_still_held(store, worker_with, monkeypatch):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    task_id = submitted(store, collection, "a")
    # The session server is shared (other databases, the session's workers): its limit stays far above what it
    # holds, and the worker is told to call it full at a thousandth of that limit.
    previous = store.redis.config_get("maxmemory")["maxmemory"]
    store.redis.config_set("maxmemory", 100 * store.redis.info("memory")["used_memory"])
    nearly_empty_is_full = tasks.get_settings().model_copy(update={"store_full_ratio": 0.001})
    monkeypatch.setattr(tasks, "get_settings", lambda: nearly_empty_is_full)
    try:
        tasks.index_image(task_id, collection, "a", {})
    finally:
        store.redis.config_set("maxmemory", previous)
    record = store.get_task(task_id)
    assert record["state"] == "failed" and record["error"]["code"] == "store_full"
    assert store.get_image(collection, "a") is None


def test_a_server_that_forgot_its_scripts_runs_each_call_once(store, worker_with):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    tasks.index_image(submitted(store, collection, "warm"), collection, "warm", {})
    store.redis.script_flush()  # a restarted server, or a promoted replica, knows none
    task_id = submitted(store, collection, "a")
    tasks.index_image(task_id, collection, "a", {})
    assert store.get_task(task_id)["state"] == "succeeded"
    assert store.change_position(collection)[0] == 2 and len(store.changes_since(collection, "0-0", 10)) == 2
    assert collection in store.list_collections()
    store.redis.script_flush()
    written: dict[int, int] = {}
    info: dict = {}
    vector = np.ones(DESCRIPTOR.dimension, np.float32) / np.sqrt(DESCRIPTOR.dimension)
    assert store.save_images(collection, [("b", vector, {}, None, None), ("c", vector, {}, None, None)],
                             DESCRIPTOR, written=written, info=info) == 0
    assert written == {0: 4} and info == store.collection_info(collection) and info["images"] == 4


def test_the_info_read_with_a_write_is_the_collections_and_the_descriptor_still_holds(store):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    store.put_collection_settings(collection, DEFAULT_COLLECTION_SETTINGS | {"kind": "block", "whitening": True})
    vector = np.ones(DESCRIPTOR.dimension, np.float32) / np.sqrt(DESCRIPTOR.dimension)
    info: dict = {}
    assert store.save_image(collection, "a", vector, {}, DESCRIPTOR, info=info) is False
    assert info == store.collection_info(collection) and info["images"] == 1 and info["settings"]["whitening"]
    assert store.buckets(collection) == 1 and store.redis.get(keys.collection_buckets(collection)) == b"1"
    with pytest.raises(LookalikeError) as refused:
        store.save_image(collection, "b", vector, {}, Descriptor("other", 8, "none"))
    assert refused.value.code == "descriptor_mismatch" and store.get_image(collection, "b") is None
    # hashes banked alone neither set nor check the descriptor
    banked = f"{collection}-banked"
    assert store.save_images(banked, [("h", None, {}, b"\x01" * 34, None)], None) == 0
    assert store.collection_info(banked)["model"] is None and store.buckets(banked) == 1


def test_a_collection_of_several_buckets_is_still_written_by_buckets(store, round_trips):
    collection = f"rt-{uuid.uuid4().hex[:8]}"
    store.put_collection_settings(collection, DEFAULT_COLLECTION_SETTINGS | {"buckets": 4})
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((12, DESCRIPTOR.dimension)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    written: dict[int, int] = {}
    info: dict = {}
    store.save_images(collection, [(f"img/{n}", row, {"n": n}, None, None) for n, row in enumerate(rows)],
                      DESCRIPTOR, written=written, info=info)
    assert not store.redis.exists(keys.collection_vectors(collection))  # nothing in the one-bucket layout
    assert sum(store.redis.hlen(keys.collection_vectors(part)) for part in keys.parts(collection, 4)) == 12
    assert set(written) == {keys.bucket_of(f"img/{n}", 4) for n in range(12)}
    assert info == store.collection_info(collection) and info["images"] == 12
    round_trips.clear()
    store.save_image(collection, "img/new", rows[0], {}, DESCRIPTOR)  # known now: claimed first, no guess
    assert round_trips["sent"] == 4  # claim, writes, claim again (a drop between), registry
    assert store.get_image(collection, "img/new") is not None and store.collection_info(collection)["images"] == 13
    # dropped and made again with one bucket: the guess is checked by the write itself
    store.drop_collection(collection)
    store.save_image(collection, "one", rows[1], {}, DESCRIPTOR)
    store.save_image(collection, "two", rows[2], {}, DESCRIPTOR)
    assert store.buckets(collection) == 1 and store.collection_info(collection)["images"] == 2


def test_the_claim_hands_the_upload_only_to_the_execution_that_claims(store):
    task_id = uuid.uuid4().hex
    store.submit([(task_id, "index", {"collection": "c", "image_id": "a"}, b"the bytes")])
    store.redis.set(keys.task_lease(task_id), "another", px=30_000)  # another live execution runs it
    outcome, record, upload = store.claim_task_and_read(task_id, "mine", "w", 30)
    assert (outcome, upload) == ("busy", None) and record["state"] == "queued"
    store.redis.delete(keys.task_lease(task_id))
    outcome, record, upload = store.claim_task_and_read(task_id, "mine", "w", 30)
    assert (outcome, upload, record["state"], record["attempts"]) == ("claimed", b"the bytes", "running", 1)
    store.redis.delete(keys.task_lease(task_id), keys.upload(task_id))  # lapsed, and the upload expired
    outcome, record, upload = store.claim_task_and_read(task_id, "again", "w", 30)
    assert (outcome, upload, record["attempts"]) == ("claimed", None, 2)
    assert store.claim_task_and_read(task_id, "again", "w", 30, upload=False)[::2] == ("claimed", None)

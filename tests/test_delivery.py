"""The pieces that make task delivery safe, one at a time against a real Redis: task leases, an index
task's effect once, restoring the messages no live worker holds, and the decoding pixel budget."""

import threading
import time

import numpy as np
import pytest
import redis

from shared import keys
from shared.images import PixelBudget
from shared.queue import make_celery
from shared.settings import Settings
from shared.store import Descriptor, Store
from kombu.transport import redis as kombu_redis

from tests.conftest import database_url, emptied_afterwards
from worker.delivery import restore_orphans, return_stranded

DESCRIPTOR = Descriptor("test-model", 4, "test-weights")


@pytest.fixture
def db_url(redis_server) -> str:
    """A Redis database of its own, emptied afterwards (no worker consumes it)."""
    with emptied_afterwards(database_url(redis_server, 7)) as url:
        yield url


@pytest.fixture
def store(db_url) -> Store:
    return Store.from_settings(Settings(redis_url=db_url))


def submitted(store: Store, task_id: str = "t1") -> str:
    store.submit([(task_id, "index", {"collection": "c", "image_id": "a"}, b"upload")])
    return task_id


def test_one_execution_holds_a_task_at_a_time(store):
    task = submitted(store)
    assert store.claim_task(task, "first", "worker-a", lease_seconds=30) == "claimed"
    assert store.claim_task(task, "second", "worker-b", lease_seconds=30) == "busy"
    assert store.renew_leases({task: "first", "missing": "x"}, 30) == ["missing"]
    assert not store.finish_task(task, "succeeded", result={}, execution="second")  # not its lease: nothing written
    assert store.get_task(task)["state"] == "running" and store.get_upload(task) == b"upload"
    assert store.finish_task(task, "succeeded", result={"ok": 1}, execution="first")
    assert store.get_task(task)["result"] == {"ok": 1} and store.get_upload(task) is None
    assert store.claim_task(task, "second", "worker-b", lease_seconds=30) == "finished"
    assert store.claim_task("never-submitted", "x", "worker-b", lease_seconds=30) == "missing"


def test_a_released_lease_lets_the_next_stage_claim_the_task(store):
    task = submitted(store)
    assert store.claim_task(task, "embed", "worker-a", lease_seconds=30) == "claimed"
    store.release_lease(task, "someone-else")  # not theirs: nothing happens
    assert store.claim_task(task, "search", "worker-b", lease_seconds=30) == "busy"
    store.release_lease(task, "embed")  # passed on to its search group
    assert store.claim_task(task, "search", "worker-b", lease_seconds=30) == "claimed"
    assert store.get_task(task)["attempts"] == 2 and store.get_task(task)["state"] == "running"


def test_a_lapsed_lease_passes_the_task_on_and_fences_the_stalled_execution(store):
    task = submitted(store)
    assert store.claim_task(task, "stalled", "worker-a", lease_seconds=0.2) == "claimed"
    deadline = time.monotonic() + 10
    while store.redis.exists(keys.task_lease(task)):  # the stalled execution renews nothing: its lease lapses
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert store.claim_task(task, "next", "worker-b", lease_seconds=30) == "claimed"
    record = store.get_task(task)
    assert record["attempts"] == 2 and record["worker"] == "worker-b"
    assert not store.holds_lease(task, "stalled") and store.holds_lease(task, "next")
    assert store.renew_leases({task: "stalled"}, 30) == [task]  # the stalled one learns it lost the task
    assert store.finish_task(task, "succeeded", result={"by": "next"}, execution="next")
    assert not store.finish_task(task, "failed", error={"code": "x"}, execution="stalled")  # finished meanwhile
    assert store.get_task(task)["result"] == {"by": "next"}


def test_an_index_task_written_twice_writes_once(store):
    vector = np.array([1, 0, 0, 0], dtype=np.float32)
    assert store.save_image("c", "a", vector, {"v": 1}, DESCRIPTOR, task_id="t1") is False
    assert store.save_image("c", "a", vector, {"v": 1}, DESCRIPTOR, task_id="t1") is False  # as the first write said
    events = store.redis.xrange(keys.collection_changes("c"))
    assert [(fields[b"op"], fields[b"id"]) for _, fields in events] == [(b"put", b"a")]
    assert store.save_image("c", "a", -vector, {"v": 2}, DESCRIPTOR, task_id="t2") is True  # another task: a write
    assert store.save_image("c", "a", -vector, {"v": 2}, DESCRIPTOR, task_id="t2") is True
    assert len(store.redis.xrange(keys.collection_changes("c"))) == 2
    assert store.get_image("c", "a")["metadata"] == {"v": 2} and set(store.get_image("c", "a")) == {
        "id", "metadata", "indexed_at"}


def test_messages_no_live_worker_holds_are_restored_and_held_ones_are_not(store, db_url):
    app = make_celery(Settings(redis_url=db_url))
    for number in range(2):
        app.send_task("lookalike.test", kwargs={"n": number}, queue="orphans")
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.do_restore = False  # as if its worker died: nothing is put back when this connection closes
        held, orphan = (channel.basic_get("orphans", no_ack=False) for _ in range(2))
    assert store.redis.llen("orphans") == 0 and store.redis.hlen("unacked") == 2
    store.beat_consumer("live-worker", {held.delivery_tag}, ttl_seconds=30)

    assert restore_orphans(app, store, live_within_seconds=30, older_than_seconds=3600) == 0  # too recent yet
    assert restore_orphans(app, store, live_within_seconds=30, older_than_seconds=0) == 1
    assert store.redis.hkeys("unacked") == [held.delivery_tag.encode()]
    assert store.redis.llen("orphans") == 1
    assert restore_orphans(app, store, live_within_seconds=0, older_than_seconds=0) == 1  # its holder went silent
    assert store.redis.hlen("unacked") == 0 and store.redis.llen("orphans") == 2


def test_the_pixel_budget_lets_decodes_share_it_and_makes_a_large_one_wait():
    budget = PixelBudget(100)
    entered, release = threading.Event(), threading.Event()

    def large() -> None:
        with budget.hold(60):
            entered.set()
            release.wait(10)

    with budget.hold(30), budget.hold(30):  # two small ones fit together
        assert budget.in_use == 60
        waiting = threading.Thread(target=large)
        waiting.start()
        assert not entered.wait(0.3)  # 60 more would not fit: it waits
    assert entered.wait(10) and budget.in_use == 60  # in as soon as the others gave theirs back
    release.set()
    waiting.join()
    with budget.hold(10**9):  # larger than the whole budget: it decodes alone, holding all of it
        assert budget.in_use == 100
    assert budget.in_use == 0


def test_a_message_taken_as_redis_goes_away_is_put_back_not_dropped(store, db_url, monkeypatch):
    app = make_celery(Settings(redis_url=db_url))
    app.conf.broker_transport = "worker.delivery:Transport"  # as the worker's app has it
    app.send_task("lookalike.test", kwargs={"n": 1}, queue="stranded")

    def redis_gone(*_args, **_kwargs):
        raise redis.exceptions.ConnectionError("Redis went away")

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        # Taken from its queue, then Redis goes away before kombu records it as unacknowledged.
        monkeypatch.setattr(kombu_redis.QoS, "append", redis_gone)
        with pytest.raises(redis.exceptions.ConnectionError):
            channel.basic_get("stranded", no_ack=False)
        monkeypatch.undo()
    assert store.redis.llen("stranded") == 0 and store.redis.hlen("unacked") == 0  # kombu alone: lost

    assert return_stranded(app) == 1
    assert store.redis.llen("stranded") == 1
    with app.connection_for_write() as connection:
        returned = connection.default_channel.basic_get("stranded", no_ack=True)
        assert returned.payload[1] == {"n": 1} and returned.headers["redelivered"]  # (Celery's protocol 2 body)
    assert return_stranded(app) == 0

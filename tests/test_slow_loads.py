"""A load that outlasts the visibility timeout never holds a query's message past it: the query waits
its bounded time and fails with collection_loading (saying how far the load got), the load goes on
in the background, the message is not delivered again, and a later query is answered from all of it.

The worker reaches its store over a slow link (a proxy passing the store's replies at a limited
rate), its broker directly; so the load is slow while tasks and heartbeats flow as usual."""

import json
import sys
import time

import numpy as np

from api.app import create_app
from shared.settings import Settings
from shared.store import Descriptor, Store
from tests.conftest import ManagedProcess, consumer_alive, finished_task, database_url, emptied_afterwards
from tests.slow_link import SlowLink

DIMENSION = 512
VECTORS = 3000
VISIBILITY_TIMEOUT_SECONDS = 4
LOAD_WAIT_SECONDS = 1
LINK_BYTES_PER_SECOND = 500_000  # about 7 MB to read: the load takes well over the visibility timeout


def test_a_load_longer_than_the_visibility_timeout_delivers_no_query_twice(redis_server, service_env, tmp_path):
    with emptied_afterwards(database_url(redis_server, 9)) as url, \
            SlowLink(redis_server.port, LINK_BYTES_PER_SECOND) as link:
        settings = Settings(redis_url=url, auth=False, rate_limit="")
        store = Store.from_settings(settings)
        client = create_app(settings).test_client()
        rng = np.random.default_rng(11)
        vectors = rng.standard_normal((VECTORS, DIMENSION)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        descriptor = Descriptor(model="elsewhere", dimension=DIMENSION, weights="elsewhere")  # a vector query takes any
        for start in range(0, VECTORS, 500):
            store.save_images("far", [(f"img/{n}", vectors[n], {}, None, None) for n in range(start, start + 500)],
                              descriptor)

        env = service_env | {"LOOKALIKE_REDIS_URL": f"redis://127.0.0.1:{link.port}/9", "LOOKALIKE_BROKER_URL": url,
                             "LOOKALIKE_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_SECONDS),
                             "LOOKALIKE_LOAD_WAIT_SECONDS": str(LOAD_WAIT_SECONDS),
                             "LOOKALIKE_REDIS_OUTAGE_SECONDS": "2", "LOOKALIKE_WORKER_METRICS_PORT": "0",
                             "LOOKALIKE_LOG_FORMAT": "text"}
        worker = ManagedProcess("worker", [sys.executable, "-m", "worker"], env, tmp_path)
        try:
            worker.wait_until(lambda: consumer_alive(store, worker.process.pid), "heartbeat")

            def query(number: int) -> str:
                response = client.post("/v1/collections/far/queries",
                                       data={"vector": json.dumps(vectors[number].tolist()), "k": "3"})
                assert response.status_code == 202, response.json
                return response.json["task_id"]

            asked_at = time.monotonic()
            first = finished_task(store, query(7))
            assert first["state"] == "failed", first
            assert first["error"]["code"] == "collection_loading", first
            assert first["error"]["details"]["vectors"] == VECTORS
            assert first["error"]["details"]["vectors_loaded"] < VECTORS  # the task says how far the load got

            while (answer := finished_task(store, query(42)))["state"] == "failed":  # a caller submitting again
                assert answer["error"]["code"] == "collection_loading", answer
            loaded_after = time.monotonic() - asked_at
            # Past the visibility timeout and a few of kombu's restore rounds since the first query was taken:
            # a message still unacknowledged would have been delivered again by now.
            while time.monotonic() - asked_at < loaded_after + VISIBILITY_TIMEOUT_SECONDS:
                time.sleep(0.5)
            first_again = store.get_task(first["task_id"])
        finally:
            worker.stop()

    assert loaded_after > 2 * VISIBILITY_TIMEOUT_SECONDS, loaded_after  # the load did outlast the timeout
    assert answer["state"] == "succeeded", answer
    assert answer["result"]["matches"][0]["id"] == "img/42"
    assert answer["result"]["matches"][0]["score"] > 0.999
    assert first_again["state"] == "failed" and first_again["attempts"] == 1, first_again  # taken once, ended once
    assert worker.output().count("replica of 3000 vectors loaded") == 1, worker.output()[-3000:]  # one load

"""Webhook receivers that hold their connections cannot starve model work: deliveries run in their own
process (`python -m worker --role webhooks`), so a plain query takes its usual time meanwhile."""

import json
import statistics
import threading
import time
import uuid

import numpy as np

from tests.conftest import natural_images
from tests.local_http import Answer

SLOW_RECEIVERS = 30


def timed_query(api, collection: str, image: bytes) -> float:
    started = time.monotonic()
    assert api.client.query(collection, image, k=3)["matches"]
    return time.monotonic() - started


def test_thirty_slow_receivers_leave_queries_their_usual_time(api, collection, web_server, worker, webhook_worker):
    images = natural_images()
    api.wait(api.index(collection, images["moon"], "moon"))
    usual = statistics.median(timed_query(api, collection, images["rocket"]) for _ in range(3))

    slow = threading.Event()
    slow.set()  # while set, receivers hold each delivery past its timeout; afterwards they answer at once
    hook = f"/{uuid.uuid4().hex[:8]}/slow-hook"
    callback_url = web_server.route(hook, lambda _request: Answer(204, delay_seconds=5 if slow.is_set() else 0))
    task_ids = []
    try:
        vector = json.dumps(np.random.default_rng(0).normal(size=512).tolist())
        for _ in range(SLOW_RECEIVERS):  # cheap tasks (no model): each ends in a delivery to a slow receiver
            submitted = api.http.post(api.url(f"/v1/collections/{collection}/queries"),
                                      data={"vector": vector, "signals": "cnn", "callback_url": callback_url})
            assert submitted.status_code == 202, submitted.text
            task_ids.append(submitted.json()["task_id"])
        deadline = time.monotonic() + 60
        while len(web_server.requests_to(hook)) < 8:  # deliveries are under way, held by their receivers
            assert time.monotonic() < deadline, "no webhook deliveries started"
            time.sleep(0.05)
        during = timed_query(api, collection, images["rocket"])
    finally:
        slow.clear()
        # Leave nothing running for later tests: every delivery ends (the receivers now answer at once).
        deadline = time.monotonic() + 120
        while any(api.client.task(task_id).get("callback", {}).get("state") in ("pending", "retrying")
                  for task_id in task_ids):
            assert time.monotonic() < deadline, "webhook deliveries still going on"
            time.sleep(0.2)
    assert during <= max(3 * usual, usual + 2.0), (during, usual)
    delivery = "Task lookalike.deliver_webhook["  # as Celery logs each task it receives and finishes
    assert delivery in webhook_worker.output() and delivery not in worker.output()

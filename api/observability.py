"""Request ids, access logs and Prometheus metrics of the API.

Under gunicorn, each worker process counts its own requests into files in
``PROMETHEUS_MULTIPROC_DIR`` (set up by api/gunicorn_conf.py), and ``/metrics`` adds them
up (prometheus_client's multiprocess mode). Queue depths and collection sizes are read
from Redis when ``/metrics`` is scraped; the per-collection series only for the collections
the scraping key may use (a key for some collections learns nothing of the others).
"""

import logging
import os
import time
import uuid
from collections.abc import Callable

from flask import Flask, Response, current_app, g, request
from kombu.exceptions import ChannelError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from shared import logs
from shared.queue import INDEX_QUEUE, QUERY_QUEUE, WEBHOOK_QUEUE

log = logging.getLogger("lookalike.access")

REQUEST_ID_HEADER = "X-Request-Id"
REQUESTS = Counter("lookalike_http_requests", "HTTP requests answered, by route, method and status.",
                   ["route", "method", "status"])
LATENCY = Histogram("lookalike_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
                    ["route", "method"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                                  10, 30))


def register_observability(app: Flask) -> None:
    app.before_request(start_request)
    app.after_request(finish_request)


def start_request() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    logs.request_id.set(incoming if logs.REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex)


def finish_request(response: Response) -> Response:
    seconds = time.perf_counter() - g.pop("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    LATENCY.labels(route, request.method).observe(seconds)
    response.headers[REQUEST_ID_HEADER] = logs.request_id.get() or ""
    log.info("%s %s %s %.1f ms", request.method, request.path, response.status_code, 1000 * seconds,
             extra={"method": request.method, "path": request.path, "status": response.status_code,
                    "duration_ms": round(1000 * seconds, 2)})
    return response


def queue_depths(celery) -> dict[str, int]:
    """Messages waiting in each of Lookalike's queues, asked of the broker (wherever it is) through kombu."""
    depths = {}
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        for queue in (INDEX_QUEUE, QUERY_QUEUE, WEBHOOK_QUEUE):
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:  # kombu's Redis transport: an empty queue does not exist
                depths[queue] = 0
    return depths


class StoreCollector:
    """Gauges read at scrape time: tasks waiting per queue (from the broker), images per (visible) collection,
    live model workers (the alert for "no worker": /readyz stays 200 without them)."""

    def __init__(self, store, celery, visible: Callable[[str], bool] = lambda _name: True,
                 worker_max_age_seconds: float = 30):
        self.store = store
        self.celery = celery
        self.visible = visible
        self.worker_max_age_seconds = worker_max_age_seconds

    def collect(self):
        depth = GaugeMetricFamily("lookalike_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"])
        for queue, waiting in queue_depths(self.celery).items():
            depth.add_metric([queue], waiting)
        yield depth
        sizes = GaugeMetricFamily("lookalike_collection_images", "Images stored per collection.", labels=["collection"])
        for name, count in self.store.collection_sizes().items():
            if self.visible(name):
                sizes.add_metric([name], count)
        yield sizes
        live = GaugeMetricFamily("lookalike_live_workers", "Model worker processes whose heartbeat is fresh.")
        live.add_metric([], len(self.store.live_workers(max_age_seconds=self.worker_max_age_seconds)))
        yield live


def metrics_response(visible: Callable[[str], bool] = lambda _name: True) -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # under gunicorn: add up every worker process
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (REQUESTS, LATENCY):
            registry.register(collector)
    context = current_app.extensions["lookalike"]
    registry.register(StoreCollector(context["store"], context["celery"], visible,
                                     3 * context["settings"].heartbeat_seconds))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


"""A worker's Prometheus metrics, served on ``LOOKALIKE_WORKER_METRICS_HOST``:``LOOKALIKE_WORKER_METRICS_PORT``
(loopback unless told otherwise: the page needs no key; one process, threads).

Images per second is ``rate(lookalike_images_embedded_total[1m])``; batch sizes and task
durations are histograms; replica lag is how long the oldest change a replica applied had
waited (0 when a refresh found nothing new).
"""

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.settings import get_settings

log = logging.getLogger(__name__)

TASKS = Counter("lookalike_tasks", "Tasks finished, by kind, state and error code.", ["kind", "state", "error"])
TASK_SECONDS = Histogram("lookalike_task_duration_seconds", "Time a task ran in the worker, by kind.", ["kind"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUEUE_WAIT_SECONDS = Histogram("lookalike_task_queue_wait_seconds", "Time from submission to a worker starting "
                               "the task, by kind.", ["kind"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
BATCH_SIZE = Histogram("lookalike_batch_size", "Images per forward pass.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
FORWARD_SECONDS = Histogram("lookalike_forward_seconds", "Time of one forward pass.",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
IMAGES = Counter("lookalike_images_embedded", "Images through the model (index and query).")
REPLICA_VECTORS = Gauge("lookalike_replica_vectors", "Vectors in this worker's replica of a collection.",
                        ["collection"])
REPLICA_LAG = Gauge("lookalike_replica_lag_seconds", "Age of the oldest change the last refresh of a replica "
                    "applied (0: it was up to date).", ["collection"])
QUERY_STALENESS = Histogram("lookalike_query_staleness_seconds", "How old the replica state a query or check "
                            "searched was (the oldest of its buckets; 0: brought up to date for it).",
                            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
GROUP_ANSWERS = Counter("lookalike_search_group_answers", "Answers a search group gave to scattered queries and "
                        "checks, by group and outcome (answered, failed).", ["group", "outcome"])
GROUP_ANSWER_SECONDS = Histogram("lookalike_search_group_answer_seconds", "Time a search group took to compute its "
                                 "answer to a scattered query or check, by group.", ["group"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
GROUPS_MISSING = Counter("lookalike_search_groups_missing", "Scattered queries and checks a search group did not "
                         "answer in time (the task failed, or answered partially where asked), by group.", ["group"])
WEBHOOKS = Counter("lookalike_webhook_attempts", "Webhook delivery attempts, by outcome.", ["outcome"])


def serve(port: int, host: str | None = None) -> None:
    """Serve /metrics on ``host``:``port`` (0: not at all; host: ``LOOKALIKE_WORKER_METRICS_HOST``); a port in use
    is logged, not fatal."""
    if not port:
        return
    host = get_settings().worker_metrics_host if host is None else host
    try:
        start_http_server(port, addr=host)
        log.info("metrics on %s:%d/metrics", host, port)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d (%s); set LOOKALIKE_WORKER_METRICS_PORT per worker", host, port, exc)

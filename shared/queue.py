"""The Celery application both sides share: the API sends tasks by name through it, the
worker registers the task functions on it; the task names, and the queue each goes to.
Importing it never imports TensorFlow."""

from celery import Celery

from shared.settings import Settings

# --- Celery task names and the queues they go to -------------------------------------------------
INDEX_TASK = "lookalike.index_image"
QUERY_TASK = "lookalike.query_image"
CHECK_TASK = "lookalike.check_image"
WEBHOOK_TASK = "lookalike.deliver_webhook"
INDEX_QUEUE = "index"
QUERY_QUEUE = "query"
WEBHOOK_QUEUE = "webhooks"
WHITEN_TASK = "lookalike.whiten"  # learns a collection's whitening; started by workers, not by callers
# The ranking half of a query or check, passed by the worker that computed its vector to the search group
# holding the collection (queue search.<group>).
SEARCH_TASK = "lookalike.search"
SEARCH_QUEUE_PREFIX = "search."
TASK_QUEUES = {INDEX_TASK: INDEX_QUEUE, QUERY_TASK: QUERY_QUEUE, CHECK_TASK: QUERY_QUEUE, WEBHOOK_TASK: WEBHOOK_QUEUE,
               WHITEN_TASK: INDEX_QUEUE}
# The tasks callers submit, by the kind their task records show.
TASK_KINDS = {INDEX_TASK: "index", QUERY_TASK: "query", CHECK_TASK: "check"}


def search_queue(group: str) -> str:
    return f"{SEARCH_QUEUE_PREFIX}{group}"


def make_celery(settings: Settings) -> Celery:
    app = Celery("lookalike", broker=settings.broker)
    app.conf.update(
        # Task state and results live in our own task records (shared.store), which carry
        # kind and timestamps and expire on our schedule; Celery's result backend would
        # store every outcome a second time.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue=INDEX_QUEUE,
        # A task is acknowledged only after it finished, and one process takes no more
        # tasks than it has threads: a crashed worker's tasks go back to the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis redelivers a task unacknowledged this long after delivery: how a crashed
        # worker's tasks come back. It must exceed the longest a task can wait in a live
        # worker (its threads' worth of batches, seconds) or tasks would run twice.
        # kombu sweeps for such tasks every interval x throttle seconds (100 s by default);
        # sweeping every tenth of the timeout brings them back within 1.1 timeouts.
        broker_transport_options={
            **({"master_name": settings.broker_sentinel_master} if settings.broker_sentinel_master else {}),
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": max(1, min(30, settings.visibility_timeout_seconds // 10)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        # Reconnect to the broker for as long as it takes (a Redis restart, a failover): a worker
        # that gave up would exit, and its supervisor would only start it again.
        broker_connection_max_retries=None,
        # Tasks running when the broker connection drops carry on and finish (they wait out the
        # outage, worker.tasks); their messages are settled on a fresh connection (worker.delivery).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # One broker connection per API thread that may publish at once (gunicorn runs 16
        # per process); Celery's default of 10 made threads queue for a connection.
        broker_pool_limit=32,
        worker_hijack_root_logger=False,
        # Task events (a few small pub/sub messages per task) feed Flower's task views.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
    )
    return app

"""The Celery application both sides share: the API sends tasks by name through it, the
worker registers the task functions on it. Importing it never imports TensorFlow."""

from celery import Celery

from shared.schemas import INDEX_QUEUE, TASK_QUEUES
from shared.settings import Settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("lookalike", broker=settings.redis_url)
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
        # Redis redelivers an unacknowledged task after this long; it must exceed the
        # longest task (seconds, here) with a wide margin, or tasks would run twice.
        broker_transport_options={"visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app

"""The worker's Celery app: shared configuration, the task modules, and the readiness heartbeat.

Start it with ``python -m worker`` (see worker/__main__.py), which checks the weights and
loads the model before the worker takes its first task.
"""

from celery import signals

from shared.queue import make_celery
from shared.settings import get_settings
from worker.runtime import Heartbeat, get_extractor

app = make_celery(get_settings())
app.conf.include = ["worker.tasks", "worker.webhooks"]

_heartbeat: Heartbeat | None = None


@signals.worker_ready.connect
def start_heartbeat(**_) -> None:
    """Announce readiness once the consumer runs; the model is loaded first if it is not yet."""
    global _heartbeat
    _heartbeat = Heartbeat(get_extractor(), get_settings().heartbeat_seconds)
    _heartbeat.start()


@signals.worker_shutdown.connect
def stop_heartbeat(**_) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()

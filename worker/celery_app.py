"""The worker's Celery app: shared configuration, the task modules, and the heartbeat.

Start it with ``python -m worker`` (see worker/__main__.py), which checks the weights and
loads the model before the worker takes its first task.
"""

from celery import signals

from shared.queue import make_celery
from shared.settings import get_settings
from worker import runtime
from worker.delivery import transport_for
from worker.runtime import Heartbeat, get_extractor

app = make_celery(get_settings())
app.conf.include = ["worker.tasks", "worker.webhooks"]
# Every task's messages are settled by worker.delivery's request class: held messages are announced
# with the heartbeat, and acknowledged on a fresh connection after Redis restarted.
app.Task.Request = "worker.delivery:Request"
# kombu's Redis (or Sentinel) transport, keeping the messages it would drop when Redis goes away mid-delivery.
app.conf.broker_transport = transport_for(get_settings().broker)

_heartbeat: Heartbeat | None = None


@signals.worker_ready.connect
def start_heartbeat(**_) -> None:
    """Start beating once the consumer runs; a worker with the model loads it first if it has not yet."""
    global _heartbeat
    extractor = get_extractor() if runtime.role_holds_model() else None
    _heartbeat = Heartbeat(app, get_settings().heartbeat_seconds, extractor)
    _heartbeat.start()


@signals.worker_shutdown.connect
def stop_heartbeat(**_) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()

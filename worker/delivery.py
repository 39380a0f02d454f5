"""How a worker process holds the task messages Celery gives it, so that none is lost, and none runs
twice at once, when Redis restarts or fails over or a worker dies.

Celery's Redis transport keeps each message a worker has taken but not acknowledged in an
``unacked`` hash; it puts one back in its queue only when its visibility timeout (300 s) has
passed, whatever became of the worker. Three pieces shorten and harden that here:

- :class:`Request` (every task's Celery request class) acknowledges a message even when the
  channel it came on closed meanwhile: after Redis restarts, kombu acks through the old channel
  and fails with an AttributeError (kombu#582) that stopped the whole worker. It acks through a
  fresh connection instead, retrying while Redis is away.
- Each process publishes, with its heartbeat, the delivery tags of the messages it holds
  (:data:`HELD`); :func:`restore_orphans` puts back in their queues the unacknowledged messages
  that no live process holds -- those of a worker whose heartbeat stopped -- within a
  heartbeat or two of it going silent, without shortening the visibility timeout of live ones.
- :class:`Leases`: the executions of running tasks (worker.tasks claims each task through
  ``Store.claim_task``), renewed with the heartbeat, so a message delivered twice never has two
  executions at once, and a dead worker's task is free again once its lease lapses.
- :class:`Transport` (the worker's broker transport): kombu takes a message from its queue
  (BRPOP) and records it as unacknowledged in a second step; when Redis goes away in between,
  kombu drops the message, which is then nowhere. This transport keeps such a message and
  :func:`return_stranded` puts it back in its queue once Redis answers again.
"""

import logging
import threading
import time
import uuid

from celery.worker import state as worker_state
from celery.worker.request import Request as CeleryRequest
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis

from shared.settings import get_settings
from shared.store import REDIS_UNAVAILABLE

log = logging.getLogger(__name__)


class HeldMessages:
    """The task messages this process has received and not yet settled, by delivery tag."""

    def __init__(self):
        self._requests: dict[str, "Request"] = {}
        self._lock = threading.Lock()

    def add(self, request: "Request") -> None:
        with self._lock:
            self._requests[request.message.delivery_tag] = request

    def discard(self, tag: str) -> None:
        with self._lock:
            self._requests.pop(tag, None)

    def snapshot(self) -> set[str]:
        """The tags this process still answers for. When the broker connection drops, Celery gives up the
        messages it had not started (prefetched ones, countdowns waiting their turn) -- kombu tries to put
        them back, which fails while Redis is away -- and keeps running the ones it had: those it still
        holds (and settles on a fresh connection), the others are forgotten here, so they are restored."""
        with self._lock:
            given_up = [tag for tag, request in self._requests.items()
                        if not _channel_is_open(request.message.channel)
                        and request not in worker_state.active_requests]
            for tag in given_up:
                del self._requests[tag]
            return set(self._requests)


HELD = HeldMessages()


class Request(CeleryRequest):
    """Celery's request, which remembers its message as held and settles it on a fresh connection when
    the channel it came on has closed (a Redis restart or failover in between)."""

    def __init__(self, message, *args, **kwargs):
        super().__init__(message, *args, **kwargs)
        HELD.add(self)

    def acknowledge(self):
        if not self.acknowledged:
            self._settle(super().acknowledge, lambda qos, tag: qos._remove_from_indices(tag).execute())

    def reject(self, requeue=False):
        if not self.acknowledged:
            self._settle(lambda: super(Request, self).reject(requeue),
                         lambda qos, tag: qos.restore_by_tag(tag, leftmost=True) if requeue
                         else qos._remove_from_indices(tag).execute())

    def _settle(self, on_its_channel, on_fresh_channel) -> None:
        tag = self._message.delivery_tag
        try:
            if _channel_is_open(self._message.channel):
                try:
                    on_its_channel()
                    return
                except Exception:  # noqa: BLE001 - the channel died under us; settle on a fresh one below
                    log.warning("settling message %s on its own channel failed; using a fresh connection", tag,
                                exc_info=True)
            log.info("settling task message %s on a fresh broker connection: the one it came on closed", tag)
            self.acknowledged = True
            with_fresh_qos(self._app, lambda qos: on_fresh_channel(qos, tag))
        finally:
            HELD.discard(tag)


def _channel_is_open(channel) -> bool:
    """False once the channel or its connection was closed (kombu then fails on ``connection.client``)."""
    return (channel is not None and not getattr(channel, "closed", False)
            and getattr(channel.connection, "client", None) is not None)


def with_fresh_qos(app, action) -> None:
    """Run ``action(qos)`` with the QoS of a channel on a new broker connection (kombu's Redis ack
    emulation: the ``unacked`` hash and index), retrying while Redis is unreachable for at most
    ``LOOKALIKE_REDIS_OUTAGE_SECONDS``. Given up, the message is back after its visibility timeout."""
    deadline = time.monotonic() + get_settings().redis_outage_seconds
    while True:
        try:
            with app.connection_for_write() as connection:
                action(connection.default_channel.qos)
            return
        except (OperationalError, *REDIS_UNAVAILABLE) as exc:
            if time.monotonic() > deadline:
                log.error("could not settle a task message while the broker was away (%s); it is delivered "
                          "again after the visibility timeout", exc)
                return
            time.sleep(1)


def restore_orphans(app, store, *, live_within_seconds: float, older_than_seconds: float) -> int:
    """Put back in their queues the unacknowledged messages that no live worker process holds.

    A message is an orphan once it has been unacknowledged for ``older_than_seconds`` (long
    enough for its holder to have announced it) and no process that beat within
    ``live_within_seconds`` holds it: its worker died. Returns how many were restored.
    """
    held = store.held_by_live_consumers(live_within_seconds)
    restored = 0
    with app.connection_for_write() as connection:
        qos = connection.default_channel.qos
        with qos.channel.conn_or_acquire() as client:
            for tag in client.zrangebyscore(qos.unacked_index_key, "-inf", store.now() - older_than_seconds):
                tag = tag.decode() if isinstance(tag, bytes) else tag
                if tag not in held:
                    qos.restore_by_tag(tag, client=client)  # at the consuming end: first in line, it has waited
                    restored += 1
    if restored:
        log.warning("restored %d task message(s) held by no live worker (a worker died); they run again now",
                    restored)
    return restored


class Leases:
    """The tasks this process runs, each with the token of its execution (``Store.claim_task``)."""

    def __init__(self):
        self._running: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, task_id: str) -> str:
        """A new execution token for ``task_id``, held until :meth:`end`."""
        execution = uuid.uuid4().hex
        with self._lock:
            self._running[task_id] = execution
        return execution

    def end(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._running)


LEASES = Leases()


class StrandedMessages:
    """Messages taken from their queue that Redis went away before they could be recorded as unacknowledged."""

    def __init__(self):
        self._messages: list[tuple[dict, str, str]] = []  # (raw message, exchange, routing key)
        self._lock = threading.Lock()

    def add(self, raw: dict, exchange: str, routing_key: str) -> None:
        with self._lock:
            self._messages.append((raw, exchange, routing_key))

    def take(self) -> list[tuple[dict, str, str]]:
        with self._lock:
            taken, self._messages = self._messages, []
            return taken


STRANDED = StrandedMessages()


class _QoS(kombu_redis.QoS):
    def append(self, message, delivery_tag):
        try:
            super().append(message, delivery_tag)
        except REDIS_UNAVAILABLE:
            delivery = message.delivery_info
            STRANDED.add(message._raw, delivery["exchange"], delivery["routing_key"])
            log.warning("a task message taken from its queue could not be recorded as Redis went away; it goes "
                        "back to its queue once Redis is back")
            raise


class _Channel(kombu_redis.Channel):
    QoS = _QoS


class Transport(kombu_redis.Transport):
    """kombu's Redis transport, keeping the messages it would drop when Redis goes away mid-delivery."""

    Channel = _Channel


class _SentinelChannel(kombu_redis.SentinelChannel):
    QoS = _QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    """The same for a broker behind Redis Sentinel (``sentinel://`` URLs): a failover is an outage too."""

    Channel = _SentinelChannel


def transport_for(broker_url: str) -> str:
    """The worker's transport class for a broker URL, as Celery's ``broker_transport`` takes it."""
    return f"{__name__}:{'SentinelTransport' if broker_url.startswith('sentinel') else 'Transport'}"


def return_stranded(app) -> int:
    """Put stranded messages back at the head of their queues; the ones Redis refuses stay for next time."""
    stranded = STRANDED.take()
    if not stranded:
        return 0
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                for raw, exchange, routing_key in stranded:
                    channel._do_restore_message(raw, exchange, routing_key, pipe)
                pipe.execute()
    except (OperationalError, *REDIS_UNAVAILABLE):
        for message in stranded:
            STRANDED.add(*message)
        raise
    log.warning("returned %d task message(s) stranded by a Redis outage to their queues", len(stranded))
    return len(stranded)

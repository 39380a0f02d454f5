"""Webhook delivery: after a task with a ``callback_url`` finishes, POST its resource there, signed.

Each attempt is its own Celery task on the ``webhooks`` queue, so a slow or failing
receiver never holds a model thread, and the backoff between attempts is a countdown, not
a sleep. Every attempt is written to the task record before the next is scheduled; a
worker that crashes mid-delivery has the attempt redelivered (acks_late). Delivery is at
least once: receivers deduplicate by ``X-Lookalike-Task-Id``.

Each delivery is signed with the webhook secret of the API key that submitted the task (read
from the key store by the task's ``api_key_id``), so a receiver of one tenant cannot forge
deliveries to another. A task submitted without a key (``LOOKALIKE_AUTH=false``) is signed
with ``LOOKALIKE_WEBHOOK_SECRET``; a task whose key is gone or has no secret is not delivered.

Beside those headers, each delivery carries the Standard Webhooks ones (shared/webhooks.py) when it has a
Standard secret: a key's task, its key's secret in standard base64 (the same bytes); a task without a key,
``LOOKALIKE_WEBHOOK_SIGNING_SECRET`` when it is set. ``webhook-id`` names the delivery, not the attempt.
"""

import json
import logging
import time

from shared import logs
from shared.apikeys import KeyStore
from shared.errors import LookalikeError
from shared.outbound import Allowlist, check_url
from shared.queue import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.settings import get_settings
from shared.store import utc_now
from shared.task_records import CALLBACK_DELIVERED, CALLBACK_FAILED, CALLBACK_RETRYING, task_resource
from shared.webhooks import (
    ATTEMPT_HEADER,
    SIGNATURE_HEADER,
    TASK_HEADER,
    TIMESTAMP_HEADER,
    message_id,
    sign,
    standard_headers,
    standard_secret_of_key,
)
from worker import metrics
from worker.celery_app import app
from worker.outbound import Delivery, post_webhook
from worker.runtime import get_store

log = logging.getLogger(__name__)


def schedule_webhook(task_id: str, attempt: int = 1, delay_seconds: float = 0) -> None:
    deliver_webhook.apply_async(kwargs={"task_id": task_id, "attempt": attempt}, countdown=delay_seconds,
                                queue=WEBHOOK_QUEUE)


def backoff_seconds(attempt: int) -> float:
    """Wait after failed attempt number ``attempt`` (1, 2, ...): doubling, capped."""
    settings = get_settings()
    return min(settings.webhook_max_backoff_seconds, settings.webhook_backoff_seconds * 2 ** (attempt - 1))


@app.task(name=WEBHOOK_TASK)
def deliver_webhook(task_id: str, attempt: int = 1) -> None:
    settings, store = get_settings(), get_store()
    logs.task_id.set(task_id)
    record = store.get_task(task_id)
    if record is None or not record.get("callback"):
        return  # the task record expired
    callback = record["callback"]
    if len(callback["attempts"]) >= attempt:  # this attempt was made; a redelivery after a crash
        if callback["state"] == CALLBACK_RETRYING and len(callback["attempts"]) == attempt:
            schedule_webhook(task_id, attempt + 1, backoff_seconds(attempt))  # the crash may have lost the next
        return
    delivery = _attempt(record, attempt)
    attempts = [*callback["attempts"], {"attempt": attempt, "at": utc_now(), "status": delivery.status,
                                        "error": delivery.error, "duration_ms": delivery.duration_ms}]
    if delivery.ok:
        state = CALLBACK_DELIVERED
    elif attempt >= settings.webhook_max_attempts or (delivery.status is None and delivery.error == _REFUSED):
        state = CALLBACK_FAILED
    else:
        state = CALLBACK_RETRYING
    store.update_callback(task_id, {**callback, "state": state, "attempts": attempts})
    metrics.WEBHOOKS.labels("delivered" if delivery.ok else state).inc()
    if state == CALLBACK_RETRYING:
        schedule_webhook(task_id, attempt + 1, backoff_seconds(attempt))
    elif state == CALLBACK_FAILED:
        log.warning("webhook of task %s given up after %d attempts", task_id, attempt)


_REFUSED = "refused by this service's configuration"


def _attempt(record: dict, attempt: int) -> Delivery:
    settings = get_settings()
    secret, standard_secret = _signing_secrets(record)
    if secret is None:
        return Delivery(None, _REFUSED, 0.0)
    try:  # checked again: the allow list may have changed since the task was submitted
        target = check_url(record["callback"]["url"], Allowlist(settings.callback_allowlist),
                           invalid_code="callback_not_allowed", refused_code="callback_not_allowed",
                           what="callback URL")
    except LookalikeError:
        return Delivery(None, _REFUSED, 0.0)
    body = json.dumps(task_resource(record, with_callback=False)).encode()
    timestamp = int(time.time())
    headers = {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TASK_HEADER: record["task_id"],
        ATTEMPT_HEADER: str(attempt),
    }
    if standard_secret is not None:
        headers.update(standard_headers(standard_secret, message_id(record["task_id"]), timestamp, body))
    return post_webhook(target, body, headers, settings.webhook_timeout_seconds)


def _signing_secrets(record: dict) -> tuple[str | None, str | None]:
    """The secret of the key that submitted the task, the service's own for tasks submitted without one; and the
    Standard Webhooks secret beside it (None: today's headers only). Never the service's own for a key's task:
    that would let one tenant's receiver verify (and forge) another's deliveries."""
    key_id = record.get("api_key_id")
    if key_id:
        secret = KeyStore(get_store().redis).webhook_secret(key_id)
        return secret, None if secret is None else standard_secret_of_key(secret)
    secret, standard = get_settings().webhook_secret, get_settings().webhook_signing_secret
    return (None if secret is None else secret.get_secret_value(),
            None if standard is None else standard.get_secret_value())

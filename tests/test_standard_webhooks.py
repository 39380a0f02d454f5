"""Standard Webhooks signatures (https://www.standardwebhooks.com/) beside X-Lookalike-Signature, checked with the
official ``standardwebhooks`` package: the signing function alone, then real deliveries by a real webhook worker
(`python -m worker --role webhooks`) to a receiver on loopback (tests/local_http.py)."""

import base64
import json
import secrets
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from shared.apikeys import KeyStore, new_webhook_secret
from shared.queue import make_celery
from shared.queue import WEBHOOK_QUEUE, WEBHOOK_TASK
from shared.settings import Settings
from shared.store import Store
from shared.webhooks import (message_id, standard_headers, standard_key, standard_secret_of_key, standard_sign,
                             verify)
from tests.conftest import ManagedProcess, WEBHOOK_SECRET, consumer_alive, database_url, emptied_afterwards
from tests.local_http import Answer

SIGNING_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# Databases of the session's Redis that no other test uses (see tests/conftest.py's database_url).
WITH_SETTING_DB, WITHOUT_SETTING_DB = 13, 14


# --- The signature alone -----------------------------------------------------------------------


def test_the_signature_is_the_one_the_package_computes_and_verifies():
    body, msg_id, timestamp = b'{"task_id": "t1", "state": "succeeded"}', "msg_t1", int(time.time())
    ours = standard_sign(standard_key(SIGNING_SECRET), msg_id, timestamp, body)
    package = Webhook(SIGNING_SECRET)
    assert ours == package.sign(msg_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body.decode())
    headers = standard_headers(SIGNING_SECRET, msg_id, timestamp, body)
    assert headers == {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": ours}
    assert package.verify(body, headers) == json.loads(body)
    for tampered in (body.replace(b"succeeded", b"failed"), body + b" "):
        with pytest.raises(WebhookVerificationError):
            package.verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):  # another message id: another signature
        package.verify(body, headers | {"webhook-id": "msg_t2"})
    with pytest.raises(WebhookVerificationError):  # another secret
        Webhook("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()).verify(body, headers)
    old = int(time.time()) - 600
    with pytest.raises(WebhookVerificationError):  # signed long ago: a replay
        package.verify(body, standard_headers(SIGNING_SECRET, msg_id, old, body))


def test_secrets_are_read_as_standard_webhooks_libraries_read_them():
    key = secrets.token_bytes(32)
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("=") and standard_key(padded) == standard_key(padded.rstrip("=")) == key
    assert (standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    # An API key's secret (python -m api.manage_keys prints URL-safe base64): the same bytes in standard base64, which
    # the package reads to the same key.
    key_secret = "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" + key[2:]).decode().rstrip("=")
    assert "-" in key_secret or "_" in key_secret
    converted = standard_secret_of_key(key_secret)
    assert converted == "whsec_" + base64.b64encode(b"\xfb\xff" + key[2:]).decode()
    body, timestamp = b"{}", int(time.time())
    Webhook(converted).verify(body, standard_headers(converted, "msg_x", timestamp, body))
    assert standard_secret_of_key(padded) == padded  # already standard
    for _ in range(50):  # the conversion docs/api.md gives key holders says the same
        key_secret = new_webhook_secret()
        documented = "whsec_" + base64.b64encode(base64.urlsafe_b64decode(key_secret[6:] + "==")).decode()
        assert standard_secret_of_key(key_secret) == documented
    for not_one in ("whsec_short", "sk_" + padded[6:], "whsec_ab+-" + padded[10:], ""):
        assert standard_secret_of_key(not_one) is None


@pytest.mark.parametrize(("value", "fault"), [
    ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with 'whsec_'"),
    ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "URL-safe base64"),
    ("whsec_not base64!", "not standard base64"),
    ("whsec_" + base64.b64encode(secrets.token_bytes(16)).decode(), "holds 16 bytes"),
    ("whsec_" + base64.b64encode(secrets.token_bytes(65)).decode(), "holds 65 bytes"),
    ("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=") + "AA", "not whole base64"),
])
def test_a_malformed_signing_secret_is_refused_when_settings_load(monkeypatch, value, fault):
    monkeypatch.setenv("LOOKALIKE_WEBHOOK_SIGNING_SECRET", value)
    with pytest.raises(ValidationError) as error:
        Settings()
    message = str(error.value)
    assert "LOOKALIKE_WEBHOOK_SIGNING_SECRET is not a Standard Webhooks secret" in message and fault in message
    assert "token_bytes(32)" in message  # how to make a good one
    assert value not in message  # a mistyped secret stays out of the startup log (hide_input_in_errors)


def test_a_good_signing_secret_is_taken_and_a_blank_one_is_none(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_WEBHOOK_SIGNING_SECRET", f" {SIGNING_SECRET}\n")
    assert Settings().webhook_signing_secret.get_secret_value() == SIGNING_SECRET
    monkeypatch.setenv("LOOKALIKE_WEBHOOK_SIGNING_SECRET", "")  # as Compose passes an unset variable
    assert Settings().webhook_signing_secret is None
    monkeypatch.delenv("LOOKALIKE_WEBHOOK_SIGNING_SECRET")
    assert Settings().webhook_signing_secret is None


# --- Real deliveries ---------------------------------------------------------------------------


class Deliverer:
    """A webhook worker on a database of its own, and what a test needs to hand it deliveries."""

    def __init__(self, url: str, process: ManagedProcess):
        self.store = Store.from_settings(Settings(redis_url=url))
        self.celery = make_celery(Settings(redis_url=url))
        self.process = process

    def deliver(self, callback_url: str, api_key_id: str | None = None) -> str:
        """A finished task with a callback, as an index worker leaves it, its delivery scheduled: its id."""
        task_id = uuid.uuid4().hex
        fields = {"collection": "c", "image_id": "a",
                  "callback": {"url": callback_url, "state": "pending", "attempts": []}}
        if api_key_id is not None:
            fields["api_key_id"] = api_key_id
        self.store.submit([(task_id, "index", fields, None)])
        assert self.store.finish_task(task_id, "succeeded", result={"image_id": "a"}, unless_running=True)
        self.celery.send_task(WEBHOOK_TASK, kwargs={"task_id": task_id, "attempt": 1}, queue=WEBHOOK_QUEUE)
        return task_id

    def callback(self, task_id: str, timeout: float = 30) -> dict:
        """The task's delivery state once it is delivered or given up on."""
        deadline = time.monotonic() + timeout
        while (callback := self.store.get_task(task_id)["callback"])["state"] not in ("delivered", "failed"):
            assert time.monotonic() < deadline, (callback, self.process.output()[-3000:])
            time.sleep(0.05)
        return callback


@contextmanager
def webhook_worker(redis_server, service_env, folder, db: int, **extra_env):
    with emptied_afterwards(database_url(redis_server, db)) as url:
        env = service_env | {"LOOKALIKE_REDIS_URL": url, "LOOKALIKE_WORKER_METRICS_PORT": "0", **extra_env}
        process = ManagedProcess(f"webhooks-{db}", [sys.executable, "-m", "worker", "--role", "webhooks"], env, folder)
        try:
            deliverer = Deliverer(url, process)
            process.wait_until(lambda: consumer_alive(deliverer.store, process.process.pid), "heartbeat")
            yield deliverer
        finally:
            process.stop()


@pytest.fixture(scope="module")
def deliverer(redis_server, service_env, tmp_path_factory):
    """A webhook worker with LOOKALIKE_WEBHOOK_SIGNING_SECRET set (and the session's LOOKALIKE_WEBHOOK_SECRET)."""
    with webhook_worker(redis_server, service_env, tmp_path_factory.mktemp("standard-webhooks"), WITH_SETTING_DB,
                        LOOKALIKE_WEBHOOK_SIGNING_SECRET=SIGNING_SECRET) as deliverer:
        yield deliverer


def hook(web_server, answer) -> tuple[str, str]:
    path = f"/{uuid.uuid4().hex[:8]}/standard-hook"
    return path, web_server.route(path, answer)


def test_a_delivery_verifies_with_the_standard_webhooks_package(deliverer, web_server):
    path, callback_url = hook(web_server, Answer(204))
    task_id = deliverer.deliver(callback_url)
    assert deliverer.callback(task_id)["state"] == "delivered"

    [delivery] = web_server.requests_to(path)
    sent = Webhook(SIGNING_SECRET).verify(delivery.body, delivery.headers)
    assert sent["task_id"] == task_id and sent["state"] == "succeeded" and "callback" not in sent
    assert delivery.headers["webhook-id"] == message_id(task_id) == f"msg_{task_id}"
    assert delivery.headers["webhook-timestamp"] == delivery.headers["X-Lookalike-Timestamp"]
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
    # Today's headers are all still there, and still verify.
    assert verify(WEBHOOK_SECRET, delivery.headers["X-Lookalike-Timestamp"],
                  delivery.headers["X-Lookalike-Signature"], delivery.body)
    assert delivery.headers["X-Lookalike-Task-Id"] == task_id and delivery.headers["X-Lookalike-Attempt"] == "1"

    # What a receiver must refuse: another body under these headers, or headers checked with another secret.
    tampered = json.dumps({**sent, "state": "failed"}).encode()
    for body in (tampered, delivery.body + b"\n", delivery.body.replace(b'"succeeded"', b'"succeeded" ')):
        with pytest.raises(WebhookVerificationError):
            Webhook(SIGNING_SECRET).verify(body, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()).verify(delivery.body, delivery.headers)


def test_a_retry_carries_the_same_webhook_id_freshly_signed(deliverer, web_server):
    calls = []

    def fails_once(request):
        calls.append(request)
        return Answer(500) if len(calls) == 1 else Answer(200, b"ok")

    path, callback_url = hook(web_server, fails_once)
    task_id = deliverer.deliver(callback_url)
    callback = deliverer.callback(task_id)
    assert callback["state"] == "delivered" and [a["status"] for a in callback["attempts"]] == [500, 200]

    first, second = web_server.requests_to(path)
    assert [first.headers["X-Lookalike-Attempt"], second.headers["X-Lookalike-Attempt"]] == ["1", "2"]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{task_id}"  # one message, retried
    assert first.body == second.body
    for request in (first, second):  # each attempt signed with its own timestamp, each verifies
        assert Webhook(SIGNING_SECRET).verify(request.body, request.headers)["task_id"] == task_id
        assert request.headers["webhook-timestamp"] == request.headers["X-Lookalike-Timestamp"]


def test_a_keys_task_is_signed_with_its_keys_secret_never_the_services(deliverer, web_server):
    _, key = KeyStore(deliverer.store.redis).create("tenant", ["index"], None)
    path, callback_url = hook(web_server, Answer(204))
    task_id = deliverer.deliver(callback_url, api_key_id=key.key_id)
    assert deliverer.callback(task_id)["state"] == "delivered"

    [delivery] = web_server.requests_to(path)
    assert verify(key.webhook_secret, delivery.headers["X-Lookalike-Timestamp"],
                  delivery.headers["X-Lookalike-Signature"], delivery.body)
    tenant_secret = standard_secret_of_key(key.webhook_secret)
    assert Webhook(tenant_secret).verify(delivery.body, delivery.headers)["task_id"] == task_id
    with pytest.raises(WebhookVerificationError):  # the service's own secret signs no tenant's deliveries
        Webhook(SIGNING_SECRET).verify(delivery.body, delivery.headers)


def test_without_the_setting_only_todays_headers_are_sent(redis_server, service_env, tmp_path_factory, web_server):
    assert "LOOKALIKE_WEBHOOK_SIGNING_SECRET" not in service_env
    with webhook_worker(redis_server, service_env, tmp_path_factory.mktemp("no-standard-webhooks"),
                        WITHOUT_SETTING_DB) as plain:
        path, callback_url = hook(web_server, Answer(204))
        task_id = plain.deliver(callback_url)
        assert plain.callback(task_id)["state"] == "delivered"
    [delivery] = web_server.requests_to(path)
    assert not any(name.lower().startswith("webhook-") for name in delivery.headers), delivery.headers
    assert verify(WEBHOOK_SECRET, delivery.headers["X-Lookalike-Timestamp"],
                  delivery.headers["X-Lookalike-Signature"], delivery.body)
    assert delivery.headers["X-Lookalike-Task-Id"] == task_id

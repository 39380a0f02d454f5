"""Images fetched by URL and webhooks, against a real local HTTP server (tests/local_http.py)."""

import io
import json
import time
import uuid

import pytest

from api.app import create_app
from shared.settings import Settings
from shared.errors import LookalikeError
from shared.outbound import Allowlist, check_url, resolve_addresses
from shared.webhooks import sign, verify
from tests.conftest import TEST_MAX_UPLOAD_BYTES, WEBHOOK_SECRET, natural_images, store_snapshot
from tests.local_http import Answer


def unique_path(name: str) -> str:
    return f"/{uuid.uuid4().hex[:8]}/{name}"


def jpeg_answer(name: str = "coffee") -> Answer:
    return Answer(200, natural_images()[name], {"Content-Type": "image/jpeg"})


def index_by_url(api, collection, url, **form):
    return api.http.post(api.url(f"/v1/collections/{collection}/images"), data={"url": url, **form})


# --- Allow lists and signatures (pure functions) -----------------------------------------------


def test_allowlist_patterns():
    allowlist = Allowlist("images.example.com, *.cdn.example.com ,media.local:8080")
    assert check_url("https://images.example.com/a.jpg", allowlist, invalid_code="invalid_url",
                     refused_code="url_not_allowed", what="URL")
    assert check_url("http://eu.cdn.example.com/b.png", allowlist, invalid_code="invalid_url",
                     refused_code="url_not_allowed", what="URL")
    assert check_url("http://media.local:8080/c", allowlist, invalid_code="invalid_url",
                     refused_code="url_not_allowed", what="URL")
    for refused in ("http://cdn.example.com/", "http://media.local/c", "http://images.example.com.evil.net/",
                    "http://evilimages.example.com/",
                    # without a port, an entry admits only the scheme's default port
                    "http://images.example.com:8080/a.jpg", "https://images.example.com:80/",
                    "http://eu.cdn.example.com:8080/b.png", "https://media.local:443/c"):
        with pytest.raises(LookalikeError) as error:
            check_url(refused, allowlist, invalid_code="invalid_url", refused_code="url_not_allowed", what="URL")
        assert error.value.code == "url_not_allowed", refused
    for invalid in ("ftp://images.example.com/a", "images.example.com/a", "http://user:pw@images.example.com/",
                    "http://images.example.com:99999/", "", None, "http://" + "a" * 3000):
        with pytest.raises(LookalikeError) as error:
            check_url(invalid, allowlist, invalid_code="invalid_url", refused_code="url_not_allowed", what="URL")
        assert error.value.code == "invalid_url", invalid
    with pytest.raises(LookalikeError):
        check_url("http://images.example.com/", Allowlist(""), invalid_code="invalid_url",
                  refused_code="url_not_allowed", what="URL")


def test_names_reach_private_addresses_only_where_the_address_is_listed(monkeypatch):
    # A stub resolver: nothing here connects (tests/test_ssrf.py covers connections).
    def resolve(host, port, **_):
        address = {"public.cdn.example.com": "93.184.216.34", "internal.cdn.example.com": "10.0.0.7",
                   "metadata.cdn.example.com": "169.254.169.254", "intranet": "192.168.1.5",
                   "media.internal": "10.20.3.4"}[host]
        return [(2, 1, 6, "", (address, port))]

    monkeypatch.setattr("socket.getaddrinfo", resolve)
    allowlist = Allowlist("*.cdn.example.com,intranet,media.internal:8080,10.20.0.0/16:8080")
    target = lambda url: check_url(url, allowlist, invalid_code="invalid_url",  # noqa: E731
                                   refused_code="url_not_allowed", what="URL")
    addresses = lambda url: [str(a) for a in resolve_addresses(target(url), "url_not_allowed", timeout=5)]  # noqa: E731
    assert addresses("http://public.cdn.example.com/a.jpg") == ["93.184.216.34"]
    assert addresses("http://media.internal:8080/a.jpg") == ["10.20.3.4"]  # its network is listed too
    # Named exactly, but its address is not listed: a name alone never opens the inside.
    for url in ("http://internal.cdn.example.com/a.jpg", "http://metadata.cdn.example.com/latest",
                "http://intranet/a.jpg"):
        with pytest.raises(LookalikeError) as error:
            addresses(url)
        assert error.value.code == "url_not_allowed"


def test_signatures_verify_only_with_the_secret_body_and_a_fresh_timestamp():
    body, now = b'{"task_id": "t1"}', 1_800_000_000
    signature = sign("s3cret", now, body)
    assert signature.startswith("sha256=") and verify("s3cret", str(now), signature, body, now=now + 10)
    assert not verify("other", str(now), signature, body, now=now)
    assert not verify("s3cret", str(now), signature, body + b" ", now=now)
    assert not verify("s3cret", str(now + 1), signature, body, now=now)
    assert not verify("s3cret", str(now), signature, body, now=now + 301)  # a replay, too late
    assert not verify("s3cret", None, signature, body) and not verify("s3cret", "x", signature, body)


# --- Images by URL ---------------------------------------------------------------------------


def test_an_image_fetched_by_url_is_indexed_and_found(api, collection, web_server):
    url = web_server.route(unique_path("coffee.jpg"), jpeg_answer())
    task = api.wait(index_by_url(api, collection, url, id="fetched/coffee"))
    assert task["state"] == "succeeded", task
    assert task["url"] == url
    assert api.query_ids(collection, natural_images()["coffee"], k=1) == ["fetched/coffee"]
    check = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/checks"), data={"url": url}))
    assert check["state"] == "succeeded" and check["result"]["best_match"]["matched_by"] == ["cnn", "pdq"]


def test_redirects_are_followed_only_to_allowed_hosts(api, collection, web_server):
    target = web_server.route(unique_path("target.jpg"), jpeg_answer("horse"))
    allowed = web_server.route(unique_path("moved"), Answer(302, headers={"Location": target}))
    task = api.wait(index_by_url(api, collection, allowed, id="redirected"))
    assert task["state"] == "succeeded", task

    # Same server, but named "localhost", which the allow list does not list.
    elsewhere = target.replace("127.0.0.1", "localhost")
    path = unique_path("away")
    refused = web_server.route(path, Answer(301, headers={"Location": elsewhere}))
    task = api.wait(index_by_url(api, collection, refused, id="away"))
    assert task["state"] == "failed" and task["error"]["code"] == "url_not_allowed"
    assert len(web_server.requests_to(path)) == 1


@pytest.mark.parametrize(("answer", "code"), [
    (Answer(200, b"\xff\xd8" + b"\0" * TEST_MAX_UPLOAD_BYTES), "fetch_too_large"),  # Content-Length says so
    (Answer(200, b"\xff\xd8" + b"\0" * TEST_MAX_UPLOAD_BYTES, content_length=False), "fetch_too_large"),  # streamed
    (Answer(404, b"gone"), "fetch_failed"),
    (Answer(302, headers={"Location": "http://[::1"}), "url_not_allowed"),  # a redirect no parser can read
    (Answer(200, natural_images()["moon"], delay_seconds=3), "fetch_timeout"),  # the limit is 2 s in the tests
    (Answer(200, b"<html>not an image</html>"), "unsupported_media_type"),
])
def test_failed_fetches_fail_the_task_with_a_clear_code(api, collection, web_server, answer, code):
    url = web_server.route(unique_path("image"), answer)
    task = api.wait(index_by_url(api, collection, url))
    assert task["state"] == "failed" and task["error"]["code"] == code, task
    assert api.http.get(api.url(f"/v1/collections/{collection}")).status_code == 404  # nothing was stored


@pytest.mark.parametrize(("form", "status", "code"), [
    ({"url": "http://images.example.com/a.jpg"}, 422, "url_not_allowed"),
    ({"url": "http://127.0.0.1:1/a.jpg"}, 422, "url_not_allowed"),  # the right host on another port
    ({"url": "file:///etc/passwd"}, 400, "invalid_url"),
    ({"url": "http://user:pass@127.0.0.1/a.jpg"}, 400, "invalid_url"),
    ({"url": "WEB/a.jpg", "image": True}, 400, "ambiguous_image_input"),
])
def test_urls_refused_at_submit_change_nothing(api, collection, web_server, redis_client, form, status, code):
    before = store_snapshot(redis_client)
    form = {name: value.replace("WEB", web_server.base_url) if isinstance(value, str) else value
            for name, value in form.items()}
    files = {"image": ("a.jpg", natural_images()["moon"])} if form.pop("image", None) else None
    for endpoint in ("images", "checks"):
        response = api.http.post(api.url(f"/v1/collections/{collection}/{endpoint}"), data=form, files=files)
        assert response.status_code == status and response.json()["error"]["code"] == code, response.text
    assert store_snapshot(redis_client) == before


# --- Webhooks ----------------------------------------------------------------------------------


def wait_for_callback(api, task_id: str, states=("delivered", "failed"), timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = api.http.get(api.url(f"/v1/tasks/{task_id}")).json()
        if task.get("callback", {}).get("state") in states or time.monotonic() > deadline:
            return task
        time.sleep(0.1)


def test_a_finished_check_is_posted_signed_to_its_callback(api, collection, web_server):
    api.wait(api.index(collection, natural_images()["rocket"], "banned/rocket"))
    assert api.http.put(api.url(f"/v1/collections/{collection}"), json={"kind": "block"}).status_code == 200
    path = unique_path("hook")
    callback_url = web_server.route(path, Answer(204))
    submitted = api.http.post(api.url(f"/v1/collections/{collection}/checks"), data={"callback_url": callback_url},
                              files={"image": ("a.jpg", natural_images()["rocket"])})
    task_id = submitted.json()["task_id"]
    task = wait_for_callback(api, task_id)

    [delivery] = web_server.requests_to(path)
    assert delivery.method == "POST" and delivery.headers["Content-Type"] == "application/json"
    assert verify(WEBHOOK_SECRET, delivery.headers["X-Lookalike-Timestamp"], delivery.headers["X-Lookalike-Signature"],
                  delivery.body)
    assert delivery.headers["X-Lookalike-Task-Id"] == task_id and delivery.headers["X-Lookalike-Attempt"] == "1"
    sent = json.loads(delivery.body)
    assert sent["task_id"] == task_id and sent["state"] == "succeeded" and sent["result"]["verdict"] == "block"
    assert "callback" not in sent
    assert task["callback"]["url"] == callback_url and task["callback"]["state"] == "delivered"
    [attempt] = task["callback"]["attempts"]
    assert attempt["attempt"] == 1 and attempt["status"] == 204 and attempt["error"] is None


def test_failed_deliveries_are_retried_with_growing_waits(api, collection, web_server):
    path = unique_path("flaky")
    calls = []

    def flaky(request):
        calls.append(request)
        return Answer(503) if len(calls) <= 2 else Answer(200, b"ok")

    callback_url = web_server.route(path, flaky)
    submitted = api.http.post(api.url(f"/v1/collections/{collection}/images"), data={"callback_url": callback_url},
                              files={"image": ("a.jpg", natural_images()["coins"])})
    task = wait_for_callback(api, submitted.json()["task_id"])
    assert task["callback"]["state"] == "delivered", task["callback"]
    assert [attempt["status"] for attempt in task["callback"]["attempts"]] == [503, 503, 200]
    assert [request.headers["X-Lookalike-Attempt"] for request in calls] == ["1", "2", "3"]
    first_wait, second_wait = calls[1].at - calls[0].at, calls[2].at - calls[1].at
    assert first_wait >= 0.25 and second_wait >= 0.5  # backoff 0.25 s, doubled
    assert len({request.body for request in calls}) == 1  # the same resource each time, freshly signed
    for request in calls:
        assert verify(WEBHOOK_SECRET, request.headers["X-Lookalike-Timestamp"],
                      request.headers["X-Lookalike-Signature"], request.body)


def test_deliveries_stop_after_the_last_attempt(api, collection, web_server, service_env):
    path = unique_path("down")
    callback_url = web_server.route(path, Answer(500))
    submitted = api.http.post(api.url(f"/v1/collections/{collection}/images"), data={"callback_url": callback_url},
                              files={"image": ("a.jpg", natural_images()["brick"])})
    task = wait_for_callback(api, submitted.json()["task_id"], states=("failed",))
    assert task["state"] == "succeeded"  # the task itself did its work
    assert task["callback"]["state"] == "failed" and len(task["callback"]["attempts"]) == 4
    # Were a fifth attempt made, it would come one backoff after the fourth (the wait before
    # attempt n+1 is the backoff doubled n-1 times, capped): wait past that, with a margin
    # for the queue, and see that none came.
    attempts = int(service_env["LOOKALIKE_WEBHOOK_MAX_ATTEMPTS"])
    next_wait = min(float(service_env.get("LOOKALIKE_WEBHOOK_MAX_BACKOFF_SECONDS",
                                          Settings.model_fields["webhook_max_backoff_seconds"].default)),
                    float(service_env["LOOKALIKE_WEBHOOK_BACKOFF_SECONDS"]) * 2 ** (attempts - 1))
    last = web_server.requests_to(path)[-1].at
    time.sleep(max(0.0, last + next_wait + 1.5 - time.monotonic()))
    assert len(web_server.requests_to(path)) == attempts  # and nothing more after giving up


@pytest.mark.parametrize(("callback_url", "status", "code"), [
    ("https://hooks.example.com/lookalike", 422, "callback_not_allowed"),
    ("http://169.254.169.254/latest/meta-data", 422, "callback_not_allowed"),
    ("javascript:alert(1)", 400, "invalid_callback_url"),
    ("http://", 400, "invalid_callback_url"),
])
def test_callbacks_outside_the_allow_list_are_refused_at_submit(api, collection, redis_client, callback_url,
                                                                  status, code):
    before = store_snapshot(redis_client)
    for endpoint in ("images", "batches", "queries", "checks"):
        response = api.http.post(api.url(f"/v1/collections/{collection}/{endpoint}"),
                                 data={"callback_url": callback_url},
                                 files={"image": ("a.jpg", natural_images()["moon"])})
        assert response.status_code == status and response.json()["error"]["code"] == code, (endpoint, response.text)
    assert store_snapshot(redis_client) == before


def test_callbacks_are_refused_while_no_secret_is_set(service_env, redis_client):
    app = create_app(Settings(redis_url=service_env["LOOKALIKE_REDIS_URL"], auth=False, rate_limit="",
                              callback_allowlist="127.0.0.1", webhook_secret=None))
    before = store_snapshot(redis_client)
    response = app.test_client().post("/v1/collections/no-secret/images", data={
        "callback_url": "http://127.0.0.1/hook", "image": (io.BytesIO(natural_images()["moon"]), "a.jpg")})
    assert response.status_code == 422 and response.json["error"]["code"] == "callback_not_allowed"
    assert "LOOKALIKE_WEBHOOK_SECRET" in response.json["error"]["message"]
    assert store_snapshot(redis_client) == before

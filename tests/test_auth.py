"""API keys: 401 without a valid key, 403 out of scope or collection, health checks open, CLI-managed."""

import io
import json
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from api.app import create_app
from shared.apikeys import KeyStore
from shared.settings import Settings
from tests.conftest import REPO, database_url, emptied_afterwards, natural_images


@pytest.fixture
def auth_db(redis_server) -> str:
    """A Redis database of its own (no worker consumes it): requests are only let in or turned away here."""
    with emptied_afterwards(database_url(redis_server, 4)) as url:
        yield url


@pytest.fixture
def client(auth_db):
    return create_app(Settings(redis_url=auth_db, auth=True)).test_client()


@pytest.fixture
def key_store(auth_db) -> KeyStore:
    return KeyStore(redis.Redis.from_url(auth_db))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def index(client, collection: str, token: str | None):
    data = {"image": (io.BytesIO(natural_images()["moon"]), "a.jpg")}
    return client.post(f"/v1/collections/{collection}/images", data=data, headers=bearer(token) if token else {})


def test_health_checks_are_open_and_everything_else_needs_a_key(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz?workers=1").status_code == 503  # open, just not ready (no worker on this database)
    for response in (index(client, "photos", None), client.get("/v1/collections/photos"),
                     client.get("/v1/tasks/abc", headers={"Authorization": "Basic abc"})):
        assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("token", ["lk_deadbeef_wrong", "lk_x", "nonsense", ""])
def test_bad_keys_are_401(client, key_store, token):
    key_store.create("real", ["admin"], None)
    response = index(client, "photos", token)
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"


def test_scopes_and_collections(client, key_store):
    query_only, _ = key_store.create("moderation", ["query"], None)
    indexer, _ = key_store.create("pipeline", ["index"], ["photos"])
    admin, _ = key_store.create("ops", ["admin"], None)

    assert index(client, "photos", indexer).status_code == 202
    refused = index(client, "photos", query_only)
    assert refused.status_code == 403 and refused.json["error"]["code"] == "forbidden"
    elsewhere = index(client, "banned", indexer)
    assert elsewhere.status_code == 403 and elsewhere.json["error"]["code"] == "forbidden"
    hashes = {"items": [{"id": "h", "hash": "ab" * 32}]}  # banking hashes: the same scope, the same collections
    assert client.post("/v1/collections/photos/hashes", json=hashes, headers=bearer(indexer)).status_code == 201
    assert client.post("/v1/collections/banned/hashes", json=hashes, headers=bearer(indexer)).status_code == 403
    assert index(client, "banned", admin).status_code == 202

    queried = client.post("/v1/collections/photos/queries",
                          data={"image": (io.BytesIO(natural_images()["moon"]), "q.jpg")}, headers=bearer(query_only))
    assert queried.status_code == 202
    task_url = queried.json["status_url"]
    assert client.get(task_url, headers=bearer(query_only)).status_code == 200  # results: any valid key
    banned_task = index(client, "banned", admin).json["status_url"]
    assert client.get(banned_task, headers=bearer(indexer)).status_code == 404  # another collection's task


def test_revoked_keys_stop_working(client, key_store):
    token, record = key_store.create("temp", ["index"], None)
    assert index(client, "photos", token).status_code == 202
    assert key_store.revoke(record.key_id)
    assert index(client, "photos", token).status_code == 401


def test_keys_are_stored_hashed(key_store):
    token, record = key_store.create("x", ["query"], None)
    raw = key_store.redis.hget("lookalike:apikeys", record.key_id).decode()
    assert token.split("_", 2)[2] not in raw and record.secret_sha256 in raw


def test_command_line_creates_lists_and_revokes(auth_db, client):
    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {"LOOKALIKE_REDIS_URL": auth_db, "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "api.manage_keys", *args], cwd=REPO, env=env, capture_output=True,
                              text=True)

    created = cli("create", "--name", "pipeline", "--scopes", "index,query", "--collections", "photos")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["scopes"] == ["index", "query"] and key["collections"] == ["photos"]
    assert index(client, "photos", key["key"]).status_code == 202

    listed = [json.loads(line) for line in cli("list").stdout.splitlines()]
    assert ([(entry["key_id"], entry["name"], entry["revoked_at"]) for entry in listed]
            == [(key["key_id"], "pipeline", None)])
    assert "secret" not in cli("list").stdout and key["key"] not in cli("list").stdout

    assert cli("revoke", key["key_id"]).returncode == 0
    assert index(client, "photos", key["key"]).status_code == 401
    assert cli("revoke", "nope").returncode == 1
    assert cli("create", "--name", "x", "--scopes", "root").returncode == 2


def test_command_line_refuses_blank_or_invalid_collection_lists(auth_db, key_store):
    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {"LOOKALIKE_REDIS_URL": auth_db, "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "api.manage_keys", *args], cwd=REPO, env=env, capture_output=True,
                              text=True)

    for collections in ("", " ", " , ", "photos,Bad_Name", "../x"):
        refused = cli("create", "--name", "x", "--scopes", "query", "--collections", collections)
        assert refused.returncode == 2 and "collection" in refused.stderr, (collections, refused.stderr)
    assert key_store.list() == []  # nothing was made, least of all a key for every collection
    made = json.loads(cli("create", "--name", "x", "--scopes", "query", "--collections", "photos, banned").stdout)
    assert made["collections"] == ["banned", "photos"]
    with pytest.raises(ValueError):
        key_store.create("x", ["query"], [])


def test_each_key_has_its_own_webhook_secret_shown_once_and_rotated_by_command(auth_db, key_store):
    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {"LOOKALIKE_REDIS_URL": auth_db, "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-m", "api.manage_keys", *args], cwd=REPO, env=env, capture_output=True,
                              text=True)

    first = json.loads(cli("create", "--name", "a", "--scopes", "index").stdout)
    second = json.loads(cli("create", "--name", "b", "--scopes", "index").stdout)
    assert first["webhook_secret"].startswith("whsec_") and first["webhook_secret"] != second["webhook_secret"]
    assert key_store.webhook_secret(first["key_id"]) == first["webhook_secret"]
    listed = cli("list").stdout
    assert first["webhook_secret"] not in listed and second["webhook_secret"] not in listed

    rotated = cli("webhook-secret", first["key_id"])
    assert rotated.returncode == 0, rotated.stderr
    new_secret = json.loads(rotated.stdout)["webhook_secret"]
    assert new_secret.startswith("whsec_") and new_secret != first["webhook_secret"]
    assert key_store.webhook_secret(first["key_id"]) == new_secret
    assert key_store.webhook_secret(second["key_id"]) == second["webhook_secret"]  # the other key untouched
    assert cli("webhook-secret", "nope").returncode == 1
    assert cli("revoke", second["key_id"]).returncode == 0
    assert cli("webhook-secret", second["key_id"]).returncode == 1  # a revoked key gets none


def test_rate_limits_per_key_with_retry_after(auth_db, key_store):
    client = create_app(Settings(redis_url=auth_db, auth=True, rate_limit="3/minute")).test_client()
    first, _ = key_store.create("busy", ["read"], None)
    second, _ = key_store.create("calm", ["read"], None)
    statuses = [client.get("/v1/collections/photos", headers=bearer(first)).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    limited = client.get("/v1/collections/photos", headers=bearer(first))
    assert limited.status_code == 429 and limited.json["error"]["code"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert client.get("/v1/collections/photos", headers=bearer(second)).status_code == 404  # its own budget
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))  # never limited
    assert client.get("/v1/collections/photos").status_code == 401  # no key: refused before counting


def test_idempotency_keys_belong_to_their_api_key(client, key_store):
    first, _ = key_store.create("pipeline-a", ["index"], None)
    second, _ = key_store.create("pipeline-b", ["index"], None)

    def post(token):
        return client.post("/v1/collections/photos/images",
                           data={"image": (io.BytesIO(natural_images()["moon"]), "a.jpg")},
                           headers=bearer(token) | {"Idempotency-Key": "upload-1"})

    a, a_again, b = post(first), post(first), post(second)
    assert a.json["task_id"] == a_again.json["task_id"] and a_again.headers["Idempotent-Replayed"] == "true"
    assert b.status_code == 202 and b.json["task_id"] != a.json["task_id"]  # another caller's key of the same name


def test_allow_collections_need_access_too(client, key_store):
    moderation, _ = key_store.create("moderation", ["query"], ["banned"])
    data = {"image": (io.BytesIO(natural_images()["moon"]), "a.jpg"), "allow_collections": '["known-good"]'}
    response = client.post("/v1/collections/banned/checks", data=data, headers=bearer(moderation))
    assert response.status_code == 403 and response.json["error"]["details"] == {"collection": "known-good"}


def test_metrics_need_the_metrics_scope(client, key_store):
    scraper, _ = key_store.create("prometheus", ["metrics"], None)
    pipeline, _ = key_store.create("pipeline", ["index", "query"], None)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(pipeline)).status_code == 403
    scraped = client.get("/metrics", headers=bearer(scraper))
    assert scraped.status_code == 200 and b"lookalike_queue_depth" in scraped.data


# --- Scopes: what each reaches ------------------------------------------------------------------

def _image_form(**fields) -> dict:
    return {"image": (io.BytesIO(natural_images()["moon"]), "a.jpg"), **fields}


ONE_VECTOR = {"items": [{"id": "v", "vector": [1.0] + [0.0] * 511}], "model": "m", "weights": "w"}
# (method, path, request arguments, the scope it needs): one of each endpoint class.
ENDPOINTS = [
    ("POST", "/v1/collections/photos/images", lambda: {"data": _image_form()}, "index"),
    ("POST", "/v1/collections/photos/batches", lambda: {"data": _image_form()}, "index"),
    ("POST", "/v1/collections/photos/vectors", lambda: {"json": ONE_VECTOR}, "index"),
    ("POST", "/v1/collections/photos/hashes", lambda: {"json": {"items": [{"id": "h", "hash": "ab" * 32}]}}, "index"),
    ("DELETE", "/v1/collections/photos/images/a", dict, "index"),
    ("POST", "/v1/collections/photos/queries", lambda: {"data": _image_form()}, "query"),
    ("POST", "/v1/collections/photos/checks", lambda: {"data": _image_form()}, "query"),
    ("GET", "/v1/collections", dict, "read"),
    ("GET", "/v1/collections/photos", dict, "read"),
    ("GET", "/v1/collections/photos/images", dict, "read"),
    ("GET", "/v1/collections/photos/images/a", dict, "read"),
    ("GET", "/v1/collections/photos/thumbnails/a", dict, "read"),
    ("GET", "/metrics", dict, "metrics"),
    ("PUT", "/v1/collections/photos", lambda: {"json": {"kind": "block"}}, "admin"),
    ("DELETE", "/v1/collections/photos", dict, "admin"),
]


def test_each_scope_reaches_only_its_endpoints(client, key_store):
    """index, query and metrics keys read no stored content; PUT and DELETE of a collection need admin."""
    for scope in ("index", "query", "read", "metrics", "admin"):
        token, _ = key_store.create(scope, [scope], None)
        for method, path, arguments, needs in ENDPOINTS:
            response = client.open(path, method=method, headers=bearer(token), **arguments())
            if scope in (needs, "admin"):
                assert response.status_code not in (401, 403), (scope, method, path, response.json)
            else:
                assert response.status_code == 403, (scope, method, path)
                assert response.json["error"]["code"] == "forbidden", (scope, method, path)
                assert needs in response.json["error"]["message"]


def test_listings_and_metrics_show_only_the_keys_collections(client, key_store):
    admin, _ = key_store.create("ops", ["admin"], None)
    for name in ("photos", "banned"):
        assert client.put(f"/v1/collections/{name}", json={"kind": "block"}, headers=bearer(admin)).status_code == 200
    reader, _ = key_store.create("reader", ["read"], ["photos"])
    scraper, _ = key_store.create("prometheus", ["metrics"], ["photos"])
    every_scraper, _ = key_store.create("prometheus-all", ["metrics"], None)

    assert client.get("/v1/collections", headers=bearer(reader)).json == {"collections": ["photos"]}
    assert client.get("/v1/collections", headers=bearer(admin)).json == {"collections": ["banned", "photos"]}
    assert client.get("/v1/collections/banned/images", headers=bearer(reader)).status_code == 403
    assert client.get("/v1/collections/photos/images", headers=bearer(reader)).status_code == 200

    def series(token) -> set[str]:
        text = client.get("/metrics", headers=bearer(token)).get_data(as_text=True)
        return set(re.findall(r'^lookalike_collection_images\{collection="([^"]+)"\}', text, re.MULTILINE))

    assert series(scraper) == {"photos"}
    assert series(every_scraper) == {"banned", "photos"}


def test_tasks_and_batches_belong_to_the_key_that_submitted_them(client, key_store):
    submitter, _ = key_store.create("pipeline", ["index"], ["photos"])
    neighbour, _ = key_store.create("other-pipeline", ["index", "query", "read"], ["photos"])
    admin, _ = key_store.create("ops", ["admin"], None)
    task_url = index(client, "photos", submitter).json["status_url"]
    batch_url = client.post("/v1/collections/photos/batches", data=_image_form(),
                            headers=bearer(submitter)).json["status_url"]

    for url, code in ((task_url, "task_not_found"), (batch_url, "batch_not_found")):
        mine = client.get(url, headers=bearer(submitter))
        assert mine.status_code == 200 and "api_key_id" not in mine.json  # the owner is kept, never shown
        assert client.get(url, headers=bearer(admin)).status_code == 200
        theirs = client.get(url, headers=bearer(neighbour))
        assert theirs.status_code == 404 and theirs.json["error"]["code"] == code  # as for an unknown id
        unknown = client.get(url.rsplit("/", 1)[0] + "/0123456789abcdef", headers=bearer(neighbour))
        assert unknown.status_code == 404 and unknown.json["error"]["message"] == theirs.json["error"]["message"]


def test_another_keys_task_is_refused_before_any_wait(client, key_store):
    submitter, _ = key_store.create("pipeline", ["index"], None)
    neighbour, _ = key_store.create("other", ["index", "query", "read"], None)
    task_url = index(client, "photos", submitter).json["status_url"]  # queued for good: nothing consumes this database
    started = time.monotonic()
    refused = client.get(f"{task_url}?wait=10", headers=bearer(neighbour))
    assert refused.status_code == 404 and time.monotonic() - started < 5  # not after waiting 10 s


def test_a_checks_allow_match_is_not_shown_to_other_keys(client, key_store):
    moderation, _ = key_store.create("moderation", ["query"], ["banned", "known-good"])
    other, _ = key_store.create("other-moderation", ["query", "read"], ["banned"])
    checked = client.post("/v1/collections/banned/checks", data=_image_form(allow_collections='["known-good"]'),
                          headers=bearer(moderation))
    assert checked.status_code == 202
    mine = client.get(checked.json["status_url"], headers=bearer(moderation))
    assert mine.status_code == 200 and mine.json["allow_collections"] == ["known-good"]
    assert client.get(checked.json["status_url"], headers=bearer(other)).status_code == 404


# --- Rate limits: one budget per key; failed authentications counted per address ---------------

def test_one_rate_limit_budget_per_key_across_routes_and_header_spellings(auth_db, key_store):
    client = create_app(Settings(redis_url=auth_db, auth=True, rate_limit="3/minute")).test_client()
    token, _ = key_store.create("busy", ["read", "query"], None)
    other, _ = key_store.create("calm", ["read"], None)
    assert client.get("/v1/collections", headers=bearer(token)).status_code == 200
    assert client.get("/v1/collections/photos", headers=bearer(token)).status_code == 404
    assert client.get("/v1/tasks/abc", headers={"Authorization": f"Bearer  {token}"}).status_code == 404  # two spaces
    limited = client.get("/v1/collections/photos/images", headers=bearer(token))  # a fourth route, the same budget
    assert limited.status_code == 429 and limited.json["error"]["code"] == "rate_limited"
    assert client.get("/v1/collections", headers=bearer(other)).status_code == 200


def test_failed_authentications_are_limited_per_client_address(auth_db, key_store):
    client = create_app(Settings(redis_url=auth_db, auth=True, auth_failure_limit="3/minute")).test_client()
    token, _ = key_store.create("real", ["read"], None)
    wrong = bearer(token[:-4] + "AAAA")
    assert [client.get("/v1/collections", headers=wrong).status_code for _ in range(3)] == [401, 401, 401]
    limited = client.get("/v1/collections", headers=wrong)
    assert limited.status_code == 429 and limited.json["error"]["code"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # Refused before the key is looked at, for the rest of the window: nothing more to learn from here.
    assert client.get("/v1/collections", headers=bearer(token)).status_code == 429
    elsewhere = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/v1/collections", headers=wrong, environ_base=elsewhere).status_code == 401  # its own budget
    assert client.get("/v1/collections", headers=bearer(token), environ_base=elsewhere).status_code == 200
    assert client.get("/healthz").status_code == 200  # open routes never count nor get refused


@pytest.mark.parametrize("trusted_proxies", [0, 1])
def test_client_addresses_come_from_the_trusted_proxy_only(auth_db, trusted_proxies):
    client = create_app(Settings(redis_url=auth_db, auth=True, auth_failure_limit="2/minute",
                                 trusted_proxies=trusted_proxies)).test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.2"}

    def attempt(client_address: str) -> int:
        return client.get("/v1/collections", headers={"X-Forwarded-For": client_address, **bearer("lk_x_y")},
                          environ_base=proxy).status_code

    assert [attempt("198.51.100.1") for _ in range(3)] == [401, 401, 429]
    # Behind a trusted proxy each client has its own budget; without one, a forged header changes nothing.
    assert attempt("198.51.100.2") == (401 if trusted_proxies else 429)


# --- Webhooks: each key signs with its own secret ---------------------------------------------------

def test_each_keys_webhooks_are_signed_with_its_own_secret(api, service_env, web_server, collection):
    from shared import keys
    from shared.store import Store
    from shared.webhooks import verify
    from tests.conftest import WEBHOOK_SECRET
    from tests.local_http import Answer

    settings = Settings(redis_url=service_env["LOOKALIKE_REDIS_URL"], auth=True, rate_limit="",
                        callback_allowlist=f"127.0.0.1:{web_server.port}", webhook_secret=None)
    keyed = create_app(settings).test_client()
    store = KeyStore(redis.Redis.from_url(service_env["LOOKALIKE_REDIS_URL"]))
    tenants = [store.create(name, ["index"], [collection]) for name in ("tenant-a", "tenant-b")]
    tasks = Store.from_settings(settings)
    try:
        paths, task_ids = {}, []
        for token, record in tenants:
            path = f"/hook-{record.key_id}-{uuid.uuid4().hex}"
            submitted = keyed.post(f"/v1/collections/{collection}/images", headers=bearer(token),
                                   data=_image_form(callback_url=web_server.route(path, Answer(204))))
            assert submitted.status_code == 202, submitted.json
            paths[record.key_id] = path
            task_ids.append(submitted.json["task_id"])

        def delivered(task_id: str) -> bool:  # recorded on the task: nothing is left in flight after the test
            callback = (tasks.get_task(task_id) or {}).get("callback") or {}
            return callback.get("state") in ("delivered", "failed")

        deadline = time.monotonic() + 120
        while not all(delivered(task_id) for task_id in task_ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        deliveries = {key_id: web_server.requests_to(path)[0] for key_id, path in paths.items()}
        for _, record in tenants:
            for key_id, delivery in deliveries.items():
                signed = (delivery.headers["X-Lookalike-Timestamp"], delivery.headers["X-Lookalike-Signature"],
                          delivery.body)
                assert verify(record.webhook_secret, *signed) == (key_id == record.key_id)
                assert not verify(WEBHOOK_SECRET, *signed)  # not the service's shared secret either
    finally:
        store.redis.hdel(keys.API_KEYS, *(record.key_id for _, record in tenants))


def test_a_key_without_a_webhook_secret_is_told_how_to_get_one(client, key_store, auth_db):
    from dataclasses import replace

    from shared import keys

    token, record = key_store.create("old", ["index"], None)
    key_store.redis.hset(keys.API_KEYS, record.key_id, replace(record, webhook_secret=None).to_json())  # as made before
    app = create_app(Settings(redis_url=auth_db, auth=True, callback_allowlist="127.0.0.1")).test_client()
    refused = app.post("/v1/collections/photos/images", headers=bearer(token),
                       data=_image_form(callback_url="http://127.0.0.1/hook"))
    assert refused.status_code == 422 and refused.json["error"]["code"] == "callback_not_allowed"
    assert f"python -m api.manage_keys webhook-secret {record.key_id}" in refused.json["error"]["message"]
    key_store.rotate_webhook_secret(record.key_id)
    accepted = app.post("/v1/collections/photos/images", headers=bearer(token),
                        data=_image_form(callback_url="http://127.0.0.1/hook"))
    assert accepted.status_code == 202


# --- Long polls: bounded per key and per process ------------------------------------------------------

def test_waiting_polls_are_bounded_per_key_and_overall(auth_db, key_store):
    from shared.store import Store

    settings = Settings(redis_url=auth_db, auth=True, rate_limit="", max_waiting_polls=3, max_waiting_polls_per_key=2)
    app = create_app(settings)
    store = Store.from_settings(settings)
    first, first_key = key_store.create("a", ["index"], None)
    second, second_key = key_store.create("b", ["index"], None)
    tasks = {key.key_id: [uuid.uuid4().hex for _ in range(4)] for key in (first_key, second_key)}
    store.submit([(task_id, "index", {"collection": "photos", "api_key_id": key_id}, None)
                  for key_id, ids in tasks.items() for task_id in ids])  # queued for good: no worker here
    answers: dict[str, tuple[int, dict, dict]] = {}
    answered = threading.Condition()

    def poll(token: str, task_id: str) -> None:
        response = app.test_client().get(f"/v1/tasks/{task_id}?wait=30", headers=bearer(token))
        with answered:
            answers[task_id] = (response.status_code, response.json, dict(response.headers))
            answered.notify_all()

    def waiting() -> int:
        from shared import keys

        channels = [keys.task_done_channel(task_id) for ids in tasks.values() for task_id in ids]
        return sum(count for _, count in store.redis.pubsub_numsub(*channels))

    def until(condition, what: str) -> None:
        deadline = time.monotonic() + 20
        with answered:
            while not condition():
                assert time.monotonic() < deadline, what
                answered.wait(0.1)

    threads = [threading.Thread(target=poll, args=(first, task_id)) for task_id in tasks[first_key.key_id]]
    threads += [threading.Thread(target=poll, args=(second, task_id)) for task_id in tasks[second_key.key_id][:2]]
    try:
        for thread in threads[:4]:
            thread.start()
        until(lambda: len(answers) == 2 and waiting() == 2, "the first key: 2 polls wait, 2 answered at once")
        for thread in threads[4:]:
            thread.start()
        until(lambda: len(answers) == 3 and waiting() == 3, "the second key: 1 poll waits (3 in all), 1 at once")
        for status, body, headers in answers.values():  # the task as it stands, and when to ask again
            assert status == 200 and body["state"] == "queued" and headers["Retry-After"] == "1"
    finally:
        for ids in tasks.values():
            for task_id in ids:
                store.finish_task(task_id, "failed", error={"code": "internal_error", "message": "test", "details": {}})
        for thread in threads:
            thread.join(60)
    waited = [body for task_id, (_, body, _) in answers.items() if body["state"] == "failed"]
    assert len(waited) == 3  # the waiting ones answered when their task finished

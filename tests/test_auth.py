"""API keys: 401 without a valid key, 403 out of scope or collection, health checks open, CLI-managed."""

import io
import json
import subprocess
import sys

import pytest
import redis

from api.app import create_app
from api.keys import KeyStore
from shared.settings import Settings
from tests.conftest import REPO, natural_images


@pytest.fixture
def auth_db(redis_server) -> str:
    """A Redis database of its own (no worker consumes it): requests are only let in or turned away here."""
    url = redis_server.url.rsplit("/", 1)[0] + "/4"
    yield url
    redis.Redis.from_url(url).flushdb()


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
    assert client.get("/readyz").status_code == 503  # open, just not ready (no worker on this database)
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
    assert index(client, "banned", admin).status_code == 202

    queried = client.post("/v1/collections/photos/queries", data={"image": (io.BytesIO(natural_images()["moon"]), "q.jpg")},
                          headers=bearer(query_only))
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
        return subprocess.run([sys.executable, "-m", "api.keys", *args], cwd=REPO, env=env, capture_output=True, text=True)

    created = cli("create", "--name", "pipeline", "--scopes", "index,query", "--collections", "photos")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["scopes"] == ["index", "query"] and key["collections"] == ["photos"]
    assert index(client, "photos", key["key"]).status_code == 202

    listed = [json.loads(line) for line in cli("list").stdout.splitlines()]
    assert [(entry["key_id"], entry["name"], entry["revoked_at"]) for entry in listed] == [(key["key_id"], "pipeline", None)]
    assert "secret" not in cli("list").stdout and key["key"] not in cli("list").stdout

    assert cli("revoke", key["key_id"]).returncode == 0
    assert index(client, "photos", key["key"]).status_code == 401
    assert cli("revoke", "nope").returncode == 1
    assert cli("create", "--name", "x", "--scopes", "root").returncode == 2


def test_rate_limits_per_key_with_retry_after(auth_db, key_store):
    client = create_app(Settings(redis_url=auth_db, auth=True, rate_limit="3/minute")).test_client()
    first, _ = key_store.create("busy", ["query"], None)
    second, _ = key_store.create("calm", ["query"], None)
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
        return client.post("/v1/collections/photos/images", data={"image": (io.BytesIO(natural_images()["moon"]), "a.jpg")},
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

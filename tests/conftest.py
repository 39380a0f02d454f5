"""Fixtures that start the real parts: a private redis-server, a Celery worker subprocess with
VGG16 (random seeded weights), and the API under gunicorn, each on a free port."""

import fnmatch
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests

from lookalike_client import Client
from shared import keys
from shared.embedded_redis import EmbeddedCluster, EmbeddedRedis, free_port
from shared.processes import ChildProcess, stop_all
from shared.settings import Settings
from shared.store import Store
from tests.local_http import LocalHttpServer
from worker.extractor import model_name

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
# Small enough that the upload-limit tests send little; every test image is far below it.
TEST_MAX_UPLOAD_BYTES = 1_000_000
STARTUP_TIMEOUT_SECONDS = 180


def natural_images() -> dict[str, bytes]:
    """The committed test photographs (see tests/data/make_images.py), by name."""
    return {path.stem: path.read_bytes() for path in sorted(DATA.glob("*.jpg"))}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), free_port()) as server:
        yield server


def database_url(redis_server: EmbeddedRedis, number: int) -> str:
    """The URL of one of the session server's other databases, which no session worker consumes.
    In use: 1 test_end_to_end, 3 test_crash_recovery, 4 test_auth, 6 test_openapi, 7 test_delivery,
    11 test_round_trips."""
    return redis_server.url.rsplit("/", 1)[0] + f"/{number}"


@contextmanager
def emptied_afterwards(url: str) -> Iterator[str]:
    """A database for one test, emptied when it ends."""
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def redis_client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[EmbeddedCluster]:
    """A real Redis Cluster of 3 masters on loopback (its nodes in ``.url``, as LOOKALIKE_REDIS_MODE=cluster takes
    them); stopped at the end of the session, whatever happened."""
    with EmbeddedCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


# The descriptor label of a worker with the default settings (what the session worker stores).
DEFAULT_MODEL = model_name(Settings.model_fields["pooling"].default, Settings.model_fields["input_mode"].default,
                           Settings.model_fields["scales"].default)
# The session worker's Prometheus endpoint; other workers started by tests serve none.
WORKER_METRICS_PORT = free_port()
# Webhooks are signed with this in the test services; receivers in tests check it.
WEBHOOK_SECRET = "test-webhook-secret"


@pytest.fixture(scope="session")
def web_server():
    """A local HTTP server that images are fetched from and webhooks are posted to (tests/local_http.py)."""
    with LocalHttpServer() as server:
        yield server


@pytest.fixture(scope="session")
def service_env(redis_server, web_server, tmp_path_factory) -> dict[str, str]:
    """Environment of the worker and API subprocesses."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(
        LOOKALIKE_REDIS_URL=redis_server.url,
        LOOKALIKE_WEIGHTS="random",
        LOOKALIKE_AUTH="false",  # tests/test_auth.py covers keys and rate limits
        LOOKALIKE_RATE_LIMIT="",
        LOOKALIKE_SEED="0",
        # Batches gather for 50 ms so that concurrent tasks visibly share forward passes.
        LOOKALIKE_WORKER_THREADS="8",
        LOOKALIKE_MAX_BATCH="8",
        LOOKALIKE_BATCH_WAIT_MS="50",
        LOOKALIKE_MAX_BATCH_FILES="16",
        LOOKALIKE_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        LOOKALIKE_HEARTBEAT_SECONDS="1",
        LOOKALIKE_MAX_UPLOAD_BYTES=str(TEST_MAX_UPLOAD_BYTES),
        # Outbound calls only to the test's own local server, named exactly (it is on loopback).
        LOOKALIKE_FETCH_ALLOWLIST=f"127.0.0.1:{web_server.port}",
        LOOKALIKE_CALLBACK_ALLOWLIST=f"127.0.0.1:{web_server.port}",
        LOOKALIKE_FETCH_TIMEOUT_SECONDS="2",
        LOOKALIKE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        LOOKALIKE_WEBHOOK_MAX_ATTEMPTS="4",
        LOOKALIKE_WEBHOOK_BACKOFF_SECONDS="0.25",
        LOOKALIKE_WEBHOOK_TIMEOUT_SECONDS="2",
        LOOKALIKE_LOG_FORMAT="json",  # tests/test_observability.py follows a request id through the logs
        LOOKALIKE_WORKER_METRICS_PORT=str(WORKER_METRICS_PORT),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


@pytest.fixture(scope="session")
def store(service_env) -> Store:
    return Store.from_settings(Settings(redis_url=service_env["LOOKALIKE_REDIS_URL"]))


class ManagedProcess(ChildProcess):
    """A child (shared/processes.py) started at once in the repository, its output in ``<log_dir>/<name>.log``
    that failures show; its readiness waits take up to STARTUP_TIMEOUT_SECONDS."""

    def __init__(self, name: str, command: list[str], env: dict, log_dir: Path):
        super().__init__(name, command, env=env, cwd=REPO, log_path=Path(log_dir) / f"{name}.log")
        self.start()

    def wait_until(self, ready, what: str, timeout: float | None = None, interval: float = 0.2):
        """Poll ``ready()`` until it answers truly. On a busy machine a check may fail or time out (a refused or
        slow answer, a Redis error): any exception counts as "not yet" until the deadline, whose error names
        the last one; the process exiting meanwhile fails the wait at once, with its log's tail."""
        return super().wait_until(ready, what, STARTUP_TIMEOUT_SECONDS if timeout is None else timeout, interval)


@pytest.fixture(scope="session")
def worker(service_env, store, tmp_path_factory):
    """One real worker process (`python -m worker`), ready once its heartbeat is in Redis. Its PDQ hashes are
    computed in a process of their own (LOOKALIKE_HASH_PROCESSES=1), so every test of hashes through the service
    goes that way; the other workers the tests start hash in their task threads (the default)."""
    process = ManagedProcess("worker", [sys.executable, "-m", "worker"],
                             {**service_env, "LOOKALIKE_HASH_PROCESSES": "1"}, tmp_path_factory.mktemp("worker"))
    try:
        process.wait_until(lambda: store.live_workers(max_age_seconds=3), "heartbeat with a loaded model")
        yield process
    finally:
        process.stop()


def finished_task(store: Store, task_id: str, timeout: float = 120) -> dict:
    """The task's record once it has finished (succeeded or failed); polled, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (record := store.get_task(task_id))["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    return record


WORKER_COMMAND = [sys.executable, "-m", "worker"]
API_COMMAND = [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"]


def search_process(name: str, group: str, env: dict, folder: Path, metrics_port: int | str = 0) -> ManagedProcess:
    """A search worker of one group (``python -m worker --role search --groups <group>``)."""
    return ManagedProcess(name, [*WORKER_COMMAND, "--role", "search", "--groups", group],
                          env | {"LOOKALIKE_WORKER_METRICS_PORT": str(metrics_port)}, folder)


@contextmanager
def split_roles(env: dict, folder: Path, store: Store, groups: tuple[str, ...]) -> Iterator[tuple[dict, dict]]:
    """An embed worker and one search process per group (each with a metrics port), all announced: yields the
    processes and their metrics ports (by "embed" and group); stops them all afterwards."""
    ports = {name: free_port() for name in ("embed", *groups)}
    processes = {"embed": ManagedProcess("embed", [*WORKER_COMMAND, "--role", "embed"],
                                         env | {"LOOKALIKE_WORKER_METRICS_PORT": str(ports["embed"])}, folder)}
    for group in groups:
        processes[group] = search_process(f"search-{group}", group, env, folder, ports[group])
    try:
        for process in processes.values():
            process.wait_until(lambda process=process: consumer_alive(store, process.process.pid), "heartbeat")
        yield processes, ports
    finally:
        stop_all(processes.values())  # together: one grace period for all of them


@contextmanager
def worker_and_api(name: str, env: dict, folder: Path, store: Store,
                   port: int) -> Iterator[tuple["ApiClient", ManagedProcess]]:
    """A worker (``--role all``) and the API under gunicorn on ``port`` (set in ``env``), the worker announced
    and the API ready: yields a client of the API and the worker; stops both afterwards."""
    worker = ManagedProcess(f"{name}-worker", WORKER_COMMAND, env, folder)
    api = ManagedProcess(f"{name}-api", API_COMMAND, env, folder)
    try:
        worker.wait_until(lambda: consumer_alive(store, worker.process.pid), "heartbeat")
        client = ApiClient(f"http://127.0.0.1:{port}")
        api.wait_until(lambda: client.http.get(client.url("/readyz?workers=1"), timeout=10).status_code == 200,
                       "readiness")
        yield client, worker
    finally:
        api.stop()
        worker.stop()


def consumer_alive(store: Store, pid: int, max_age_seconds: float = 3) -> bool:
    """Whether the worker process ``pid`` (any role) has announced itself within ``max_age_seconds``."""
    beat = store.redis.zscore(keys.CONSUMERS, f"{socket.gethostname()}:{pid}")
    return beat is not None and time.time() - beat < max_age_seconds


@pytest.fixture(scope="session")
def webhook_worker(service_env, store, tmp_path_factory):
    """The process that delivers webhooks (`python -m worker --role webhooks`), ready once it beats."""
    env = service_env | {"LOOKALIKE_WORKER_METRICS_PORT": "0"}
    process = ManagedProcess("webhooks", [sys.executable, "-m", "worker", "--role", "webhooks"], env,
                             tmp_path_factory.mktemp("webhooks"))
    try:
        process.wait_until(lambda: consumer_alive(store, process.process.pid), "heartbeat")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def api_process(service_env, tmp_path_factory):
    """The real API under gunicorn on a free port (its address in ``.url``)."""
    port = free_port()
    env = service_env | {"LOOKALIKE_HOST": "127.0.0.1", "LOOKALIKE_PORT": str(port), "WEB_CONCURRENCY": "1"}
    process = ManagedProcess("api", API_COMMAND, env, tmp_path_factory.mktemp("api"))
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        # Refused, reset, or slower than the timeout (a busy machine): not yet, until wait_until's deadline.
        try:
            return requests.get(f"{url}/healthz", timeout=(5, 15)).status_code == 200
        except requests.RequestException:
            return False

    try:
        process.wait_until(healthy, "answer on /healthz")
        process.url = url
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def api_url(api_process) -> str:
    return api_process.url


class ApiClient:
    """Raw HTTP calls for tests that check statuses and headers, and the project's client for the rest."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = requests.Session()  # for requests whose exact status and headers a test checks
        self.client = Client(base_url, timeout=60)  # lookalike_client, as callers use it

    def url(self, path: str) -> str:
        return self.base_url + path

    def index(self, collection: str, image: bytes, image_id: str | None = None, metadata: dict | None = None):
        form = {}
        if image_id is not None:
            form["id"] = image_id
        if metadata is not None:
            form["metadata"] = json.dumps(metadata)
        return self.http.post(self.url(f"/v1/collections/{collection}/images"), files={"image": ("image.jpg", image)},
                              data=form)

    def query(self, collection: str, image: bytes, k: int | None = None):
        form = {} if k is None else {"k": str(k)}
        return self.http.post(self.url(f"/v1/collections/{collection}/queries"), files={"image": ("query.jpg", image)},
                              data=form)

    def wait(self, submitted: requests.Response, timeout: float = 60) -> dict:
        """The task a submission answered, once it has finished (through the Python client)."""
        assert submitted.status_code == 202, submitted.text
        return self.client.wait(submitted.json()["task_id"], timeout)

    def query_ids(self, collection: str, image: bytes, k: int = 10) -> list[str]:
        return [match["id"] for match in self.client.query(collection, image, k=k)["matches"]]


@pytest.fixture(scope="session")
def api(api_url, worker, webhook_worker) -> ApiClient:
    """The API with a ready worker (and webhook deliverer) behind it."""
    return ApiClient(api_url)


@pytest.fixture
def collection() -> str:
    """A fresh collection name, so tests sharing the session's Redis never see each other's images."""
    return f"test-{uuid.uuid4().hex[:12]}"


def store_snapshot(client: redis.Redis) -> dict[bytes, object]:
    """Every Lookalike record (not what worker processes announce about themselves) with its contents, to
    prove nothing changed. Contents, not DUMP bytes: Redis may re-encode or rehash a set or hash whose
    members did not change."""
    heartbeats = {key.encode() for key in (keys.WORKERS, keys.WORKERS_INFO, keys.CONSUMERS, keys.REAPER)}
    running = (keys.consumer_held("*"), keys.task_lease("*"))  # what processes hold while they run
    read = {b"string": client.get, b"hash": client.hgetall, b"set": client.smembers,
            b"list": lambda key: client.lrange(key, 0, -1),
            b"zset": lambda key: client.zrange(key, 0, -1, withscores=True), b"stream": client.xrange}
    return {key: read[client.type(key)](key) for key in client.scan_iter(keys.ALL_KEYS_PATTERN)
            if key not in heartbeats and not any(fnmatch.fnmatchcase(key.decode(), pattern) for pattern in running)}

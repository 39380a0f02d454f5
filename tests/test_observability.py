"""Prometheus metrics of the API and the worker, and one request id from the HTTP request to the worker's logs."""

import json
import logging
import socket
import time
import uuid

import requests
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.settings import Settings
from tests.conftest import WORKER_METRICS_PORT, natural_images
from tests.local_http import Answer


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page as {(name, sorted labels): value}."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_api_metrics_count_requests_and_read_queues_and_collections(api, collection):
    for name in ("moon", "rocket"):
        api.wait(api.index(collection, natural_images()[name], name))
    api.http.get(api.url("/v1/tasks/no-such-task"))
    samples = scrape(api.url("/metrics"))
    assert value(samples, "lookalike_http_requests_total", route="/v1/collections/<collection>/images",
                 method="POST", status="202") >= 2
    assert value(samples, "lookalike_http_requests_total", route="/v1/tasks/<task_id>", method="GET", status="404") >= 1
    assert value(samples, "lookalike_http_request_duration_seconds_count", route="/v1/tasks/<task_id>",
                 method="GET") >= 3
    assert value(samples, "lookalike_collection_images", collection=collection) == 2
    assert ("lookalike_queue_depth", (("queue", "index"),)) in samples
    assert ("lookalike_queue_depth", (("queue", "webhooks"),)) in samples


def test_worker_metrics_show_tasks_batches_and_replicas(api, collection, web_server):
    worker_metrics = f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics"
    before = scrape(worker_metrics)
    api.wait(api.index(collection, natural_images()["coffee"], "coffee"))
    missing = web_server.route(f"/{uuid.uuid4().hex}/gone.jpg", Answer(404))
    api.wait(api.http.post(api.url(f"/v1/collections/{collection}/images"), data={"url": missing}))
    api.query_ids(collection, natural_images()["coffee"], k=1)
    after = scrape(worker_metrics)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("lookalike_tasks_total", kind="index", state="succeeded", error="") == 1
    assert grew("lookalike_tasks_total", kind="index", state="failed", error="fetch_failed") == 1
    assert grew("lookalike_tasks_total", kind="query", state="succeeded", error="") == 1
    assert grew("lookalike_task_duration_seconds_count", kind="query") == 1
    assert grew("lookalike_images_embedded_total") == 2  # the indexed image and the query's
    assert grew("lookalike_batch_size_count") >= 1 and grew("lookalike_forward_seconds_count") >= 1
    assert value(after, "lookalike_replica_vectors", collection=collection) == 1
    assert ("lookalike_replica_lag_seconds", (("collection", collection),)) in after


def test_collections_that_do_not_exist_leave_no_replica_or_series_behind(api, collection):
    worker_metrics = f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics"
    never_written = f"{collection}-never"
    assert api.client.query(never_written, natural_images()["moon"], k=3)["matches"] == []
    assert not any(labels == (("collection", never_written),) for _, labels in scrape(worker_metrics))

    api.wait(api.index(collection, natural_images()["moon"], "moon"))
    assert api.query_ids(collection, natural_images()["moon"], k=1) == ["moon"]
    assert value(scrape(worker_metrics), "lookalike_replica_vectors", collection=collection) == 1
    assert api.http.delete(api.url(f"/v1/collections/{collection}")).status_code == 200
    assert api.client.query(collection, natural_images()["moon"], k=3)["matches"] == []  # dropped: let go
    assert not any(labels == (("collection", collection),) for _, labels in scrape(worker_metrics))


def test_one_request_id_from_the_api_to_the_worker_logs(api, api_process, worker, collection):
    request_id = f"trace-{uuid.uuid4().hex}"
    submitted = api.http.post(api.url(f"/v1/collections/{collection}/images"), headers={"X-Request-Id": request_id},
                              files={"image": ("a.jpg", natural_images()["horse"])})
    assert submitted.headers["X-Request-Id"] == request_id
    task = api.wait(submitted)
    assert task["request_id"] == request_id

    def lines(process):
        return [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        api_lines = [line for line in lines(api_process) if line.get("request_id") == request_id]
        worker_lines = [line for line in lines(worker) if line.get("request_id") == request_id]
        if api_lines and worker_lines:
            break
        time.sleep(0.2)
    [access] = api_lines
    assert access["path"] == f"/v1/collections/{collection}/images" and access["status"] == 202
    assert access["service"] == "api" and access["level"] == "INFO" and access["duration_ms"] > 0
    assert any(line["task_id"] == task["task_id"] and line["service"] == "worker" for line in worker_lines)

    generated = api.http.get(api.url("/healthz"), headers={"X-Request-Id": "bad id with spaces"})
    assert generated.headers["X-Request-Id"] != "bad id with spaces" and len(generated.headers["X-Request-Id"]) == 32


def test_worker_metrics_listen_on_loopback_only(worker):
    """LOOKALIKE_WORKER_METRICS_HOST defaults to 127.0.0.1: the page needs no key, so it is not on every interface."""
    assert requests.get(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics", timeout=10).status_code == 200
    with socket.socket() as other_address:  # another loopback address: answered only by a socket on 0.0.0.0
        other_address.settimeout(10)
        assert other_address.connect_ex(("127.0.0.2", WORKER_METRICS_PORT)) != 0


FORGED = "2026-01-01 00:00:00,000 INFO lookalike.auth [req=None task=None]: admin key accepted"


def test_text_logs_escape_control_characters_so_no_line_can_be_forged(redis_server, capsys):
    """A path with %0a (or %0d, or other control characters) stays on its own log line; JSON lines stay JSON."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = "/v1/tasks/x%0a" + requests.utils.quote(FORGED) + "%0d%1b[2J%e2%80%a8end"
    try:
        for log_format in ("text", "json"):
            app = create_app(Settings(redis_url=redis_server.url, auth=False, rate_limit="", log_format=log_format))
            assert app.test_client().get(path).status_code == 404
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("lookalike.test").exception("failed on %s", "a\nb")
            output = capsys.readouterr().err.splitlines()
            if log_format == "text":
                [access] = [line for line in output if "lookalike.access" in line]
                assert "/v1/tasks/x\\n2026-01-01" in access and "\\r\\x1b[2J\\u2028end 404" in access
                assert not any(line.startswith(FORGED[:23]) for line in output)
                assert "Traceback (most recent call last):" in output  # tracebacks keep their own lines
                assert any("failed on a\\nb" in line for line in output)
            else:
                [access] = [json.loads(line) for line in output if '"lookalike.access"' in line]
                assert access["path"].startswith("/v1/tasks/x\n" + FORGED)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

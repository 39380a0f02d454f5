"""The whole flow over HTTP: index, query with an edited copy, poll, fetch, delete, replace."""

import time

import cv2
import numpy as np
import pytest
import requests

from tests.conftest import DEFAULT_MODEL, natural_images


def ready(api, timeout: float = 60) -> dict:
    """/readyz's body once it answers 200. On a busy machine a heartbeat can come late (503 for a moment)
    or the answer slowly: "not yet" until the deadline, so that only a worker that stays away fails."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = api.http.get(api.url("/readyz?workers=1"), timeout=15)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text}"
        except requests.RequestException as exc:
            last = repr(exc)
        assert time.monotonic() < deadline, f"/readyz not ready within {timeout} s: {last}"
        time.sleep(0.2)


def edited_copy(jpeg: bytes, scale: float = 0.6, quality: int = 60) -> bytes:
    """The same photograph resized and JPEG-recompressed, as a re-upload would be."""
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    smaller = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", smaller, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


@pytest.fixture
def indexed_collection(api, collection):
    """A collection holding every test photograph under a path-like id, with metadata."""
    images = natural_images()
    assert len(images) >= 10
    submitted = {name: api.index(collection, data, f"photos/{name}.jpg", {"name": name})
                 for name, data in images.items()}
    for name, response in submitted.items():
        body = response.json()
        assert response.status_code == 202, body
        assert body["image_id"] == f"photos/{name}.jpg"
        assert response.headers["Location"] == body["status_url"] == f"/v1/tasks/{body['task_id']}"
        task = api.wait(response)
        assert task["state"] == "succeeded", task
        assert task["kind"] == "index"
        assert task["result"]["replaced"] is False
    return collection, images


def test_edited_copy_ranks_first_and_deleted_image_disappears(api, indexed_collection):
    collection, images = indexed_collection
    for name in ("chelsea", "rocket", "coins"):
        task = api.wait(api.query(collection, edited_copy(images[name]), k=5))
        assert task["state"] == "succeeded", task
        matches = task["result"]["matches"]
        assert [m["id"] for m in matches][0] == f"photos/{name}.jpg"
        assert matches[0]["metadata"] == {"name": name}
        scores = [m["score"] for m in matches]
        assert scores == sorted(scores, reverse=True) and len(matches) == 5
        assert 0.9 < scores[0] <= 1.0 + 1e-6

    deleted = api.http.delete(api.url(f"/v1/collections/{collection}/images/photos/chelsea.jpg"))
    assert deleted.status_code == 200, deleted.text
    ids = api.query_ids(collection, edited_copy(images["chelsea"]), k=len(images))
    assert "photos/chelsea.jpg" not in ids
    assert len(ids) == len(images) - 1
    assert api.http.get(api.url(f"/v1/collections/{collection}/images/photos/chelsea.jpg")).status_code == 404
    assert api.http.delete(api.url(f"/v1/collections/{collection}/images/photos/chelsea.jpg")).status_code == 404


def test_identical_image_scores_one_and_results_are_labelled(api, indexed_collection):
    collection, images = indexed_collection
    task = api.wait(api.query(collection, images["moon"], k=1))
    result = task["result"]
    assert result["matches"][0]["id"] == "photos/moon.jpg"
    assert result["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert result["weights"] == "random(seed=0)"
    assert "RANDOM" in result["warning"]
    assert task["submitted_at"] <= task["started_at"] <= task["finished_at"]


def test_image_and_collection_resources(api, indexed_collection):
    collection, images = indexed_collection
    image = api.http.get(api.url(f"/v1/collections/{collection}/images/photos%2Fmoon.jpg")).json()
    assert image["id"] == "photos/moon.jpg" and image["metadata"] == {"name": "moon"} and image["indexed_at"]
    assert len(image["pdq"]["hash"]) == 64 and 0 <= image["pdq"]["quality"] <= 100
    info = api.http.get(api.url(f"/v1/collections/{collection}")).json()
    assert info == {
        "collection": collection,
        "images": len(images),
        "dimension": 512,
        "model": DEFAULT_MODEL,
        "weights": "random(seed=0)",
        "configured": False,
        "settings": {"match_threshold": 0.9, "pdq_max_distance": 31, "kind": "block", "whitening": False, "group": None,
                     "buckets": 1},
        "whitening": None,
    }


def test_indexing_an_existing_id_replaces_it(api, collection):
    images = natural_images()
    first = api.wait(api.index(collection, images["moon"], "same-id", {"version": 1}))
    second = api.wait(api.index(collection, images["rocket"], "same-id", {"version": 2}))
    assert first["result"]["replaced"] is False and second["result"]["replaced"] is True
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["images"] == 1
    task = api.wait(api.query(collection, images["rocket"], k=10))
    assert task["result"]["matches"] == [
        {"id": "same-id", "score": pytest.approx(1.0, abs=1e-5), "pdq_distance": 0, "near_duplicate": True,
         "matched_by": ["cnn", "pdq"], "metadata": {"version": 2}}
    ]  # (queries use both signals by default)


def test_generated_id_and_default_k(api, collection):
    images = natural_images()
    response = api.index(collection, images["coffee"])
    image_id = response.json()["image_id"]
    assert len(image_id) == 32
    assert api.wait(response)["state"] == "succeeded"
    for name in ("moon", "rocket", "page", "horse", "brick", "camera", "coins", "gravel", "retina", "astronaut",
                 "chelsea"):
        api.wait(api.index(collection, images[name], name))
    task = api.wait(api.query(collection, images["coffee"]))
    assert len(task["result"]["matches"]) == 10  # LOOKALIKE_DEFAULT_K
    assert task["k"] == 10 and task["result"]["matches"][0]["id"] == image_id


def test_query_on_an_empty_collection_returns_no_matches(api, collection):
    task = api.wait(api.query(collection, natural_images()["moon"]))
    assert task["state"] == "succeeded" and task["result"]["matches"] == []
    assert api.http.get(api.url(f"/v1/collections/{collection}")).status_code == 404


def test_wait_returns_as_soon_as_the_task_finishes(api, collection):
    response = api.index(collection, natural_images()["moon"])
    task = api.http.get(api.base_url + response.json()["status_url"], params={"wait": 30}, timeout=40).json()
    assert task["state"] == "succeeded"


def test_unknown_task_is_404(api):
    response = api.http.get(api.url("/v1/tasks/0123456789abcdef0123456789abcdef"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "task_not_found"


def test_health_and_readiness_name_random_weights(api):
    assert api.http.get(api.url("/healthz")).json() == {"status": "ok"}
    body = ready(api)
    assert body["weights"] == ["random(seed=0)"]
    assert "RANDOM" in body["warning"]
    assert body["workers"][0]["model"] == DEFAULT_MODEL
    assert body["status"] == "ready"


def test_without_a_worker_the_api_stays_ready_and_the_service_is_not(redis_server):
    """The real app against a Redis database no worker has announced itself in: the API process can answer
    (a load balancer keeps it; results and settings need no worker), the whole service is not ready."""
    from api.app import create_app
    from shared.settings import Settings

    empty_database = redis_server.url.rsplit("/", 1)[0] + "/1"
    client = create_app(Settings(redis_url=empty_database, auth=False)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "degraded" and response.json["workers"] == []
    assert "No worker" in response.json["warning"]
    whole = client.get("/readyz?workers=1")
    assert whole.status_code == 503 and whole.json["error"]["code"] == "not_ready"
    assert client.get("/readyz?workers=maybe").json["error"]["code"] == "invalid_workers"
    assert client.get("/healthz").status_code == 200
    assert b"lookalike_live_workers 0.0" in client.get("/metrics").data


def test_a_query_sees_every_image_indexed_before_it(api, collection):
    """The worker's in-memory replica is refreshed before each query, not reloaded."""
    images = natural_images()
    api.wait(api.index(collection, images["moon"], "moon"))
    assert api.query_ids(collection, images["rocket"], k=10) == ["moon"]  # the replica is loaded here
    assert api.wait(api.index(collection, images["rocket"], "rocket"))["state"] == "succeeded"
    assert api.query_ids(collection, images["rocket"], k=10)[0] == "rocket"
    api.http.delete(api.url(f"/v1/collections/{collection}/images/rocket"))
    assert api.query_ids(collection, images["rocket"], k=10) == ["moon"]

"""Collection settings, near-duplicate marks and verdicts on queries, and the checks endpoint."""

import json

import numpy as np
import pytest

from tests.conftest import natural_images, store_snapshot
from tests.test_vectors_and_filters import store_vectors, unit_vectors


def near(vector: np.ndarray, cosine: float, seed: int = 0) -> np.ndarray:
    """A unit vector at exactly ``cosine`` similarity to ``vector``."""
    other = unit_vectors(1, seed)[0]
    other -= (other @ vector) * vector
    other /= np.linalg.norm(other)
    return cosine * vector + np.sqrt(1 - cosine**2) * other


def submit(api, collection, endpoint, vector, **form):
    data = {"vector": json.dumps(vector.tolist()), **{k: json.dumps(v) for k, v in form.items()}}
    task = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/{endpoint}"), data=data))
    assert task["state"] == "succeeded", task
    return task


@pytest.fixture
def banned(api, collection):
    vectors = unit_vectors(3, seed=21)
    store_vectors(api, collection, [{"id": f"banned/{n}", "vector": v.tolist(), "metadata": {"case": n}}
                                    for n, v in enumerate(vectors)])
    return collection, vectors


def test_settings_default_and_update(api, banned):
    collection, _ = banned
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["settings"] == {
        "match_threshold": 0.9, "pdq_max_distance": 31, "kind": "block", "whitening": False, "group": None,
        "buckets": 1}
    response = api.http.put(api.url(f"/v1/collections/{collection}"), json={"match_threshold": 0.8, "kind": "allow"})
    assert response.status_code == 200
    assert response.json()["settings"] == {"match_threshold": 0.8, "pdq_max_distance": 31, "kind": "allow",
                                           "whitening": False, "group": None, "buckets": 1}
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["settings"]["kind"] == "allow"


def test_a_written_collection_keeps_its_bucket_count(api, banned, redis_client):
    collection, _ = banned
    before = store_snapshot(redis_client)
    response = api.http.put(api.url(f"/v1/collections/{collection}"), json={"buckets": 8})
    assert response.status_code == 409 and response.json()["error"]["code"] == "buckets_fixed"
    assert response.json()["error"]["details"] == {"buckets": 1, "requested": 8}
    assert store_snapshot(redis_client) == before


@pytest.mark.parametrize("body", [{"match_threshold": 2}, {"match_threshold": "high"}, {"kind": "maybe"},
                                  {"pdq_max_distance": 257}, {"pdq_max_distance": 3.5}, {"pdq_max_distance": True},
                                  {"threshold": 0.9}, [0.9], None, {"buckets": 0}, {"buckets": 1025},
                                  {"buckets": "8"}, {"buckets": True}, {"buckets": 2.5}])
def test_bad_settings_are_refused(api, banned, redis_client, body):
    collection, _ = banned
    before = store_snapshot(redis_client)
    response = api.http.put(api.url(f"/v1/collections/{collection}"), data=json.dumps(body),
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_collection_settings"
    assert store_snapshot(redis_client) == before


def configured(api, collection: str, **settings) -> None:
    """Say what the collection is for (its moderation settings): only then do its matches get verdicts."""
    assert api.http.put(api.url(f"/v1/collections/{collection}"), json={"kind": "block", **settings}).status_code == 200


def test_a_collection_nobody_configured_gives_no_verdict(api, banned):
    collection, vectors = banned
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["configured"] is False
    result = submit(api, collection, "queries", near(vectors[1], 0.95), k=3)["result"]
    assert result["verdict"] is None and result["matches"][0]["near_duplicate"] is True  # still marked
    checked = submit(api, collection, "checks", near(vectors[1], 0.95))["result"]
    assert checked["verdict"] is None and checked["near_duplicate"] is True
    configured(api, collection)
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["configured"] is True
    assert submit(api, collection, "checks", near(vectors[1], 0.95))["result"]["verdict"] == "block"


def test_query_marks_near_duplicates_and_gives_a_verdict(api, banned):
    collection, vectors = banned
    configured(api, collection)
    result = submit(api, collection, "queries", near(vectors[1], 0.95), k=3)["result"]
    assert result["verdict"] == "block" and result["match_threshold"] == 0.9 and result["kind"] == "block"
    first, *rest = result["matches"]
    assert (first["id"], first["near_duplicate"]) == ("banned/1", True)
    assert len(rest) == 2 and not any(match["near_duplicate"] for match in rest)
    assert submit(api, collection, "queries", near(vectors[1], 0.85))["result"]["verdict"] == "none"


def test_checks_give_the_verdict_and_best_match(api, banned):
    collection, vectors = banned
    configured(api, collection)
    task = submit(api, collection, "checks", near(vectors[2], 0.93))
    assert task["kind"] == "check"
    result = task["result"]
    assert result["verdict"] == "block" and result["near_duplicate"] is True
    assert result["best_match"]["id"] == "banned/2" and result["best_match"]["score"] == pytest.approx(0.93, abs=1e-4)
    assert result["best_match"]["metadata"] == {"case": 2}

    missed = submit(api, collection, "checks", near(vectors[2], 0.5))["result"]
    assert missed["verdict"] == "none" and missed["near_duplicate"] is False
    assert missed["best_match"]["id"] == "banned/2"

    api.http.put(api.url(f"/v1/collections/{collection}"), json={"match_threshold": 0.4, "kind": "allow"})
    assert submit(api, collection, "checks", near(vectors[2], 0.5))["result"]["verdict"] == "allow"


def test_check_against_an_empty_collection_and_by_image(api, collection):
    result = submit(api, collection, "checks", unit_vectors(1, seed=3)[0])["result"]
    assert result == result | {"verdict": None, "near_duplicate": False, "best_match": None}  # (not configured)
    configured(api, collection)
    result = submit(api, collection, "checks", unit_vectors(1, seed=3)[0])["result"]
    assert result == result | {"verdict": "none", "near_duplicate": False, "best_match": None}
    images = natural_images()
    api.wait(api.index(collection, images["moon"], "moon"))
    task = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/checks"),
                                  files={"image": ("q.jpg", images["moon"])}))
    assert task["result"]["best_match"]["id"] == "moon" and task["result"]["verdict"] == "block"


def test_an_allow_list_match_overrides_the_block_verdict(api, banned):
    collection, vectors = banned
    known_good = f"{collection}-good"
    store_vectors(api, known_good, [{"id": "meme/1", "vector": near(vectors[0], 0.97, seed=5).tolist()}])
    api.http.put(api.url(f"/v1/collections/{known_good}"), json={"match_threshold": 0.9, "kind": "allow"})
    probe = near(vectors[0], 0.96, seed=6)  # about 0.93 from meme/1
    configured(api, collection)

    assert submit(api, collection, "checks", probe)["result"]["verdict"] == "block"
    result = submit(api, collection, "checks", probe, allow_collections=[f"{collection}-empty", known_good])["result"]
    assert result["verdict"] == "allow" and result["near_duplicate"] is True
    assert result["best_match"]["id"] == "banned/0"  # the block match is still reported
    assert result["allow_match"]["collection"] == known_good and result["allow_match"]["id"] == "meme/1"

    elsewhere = submit(api, collection, "checks", near(vectors[1], 0.96), allow_collections=[known_good])["result"]
    assert elsewhere["verdict"] == "block" and elsewhere["allow_match"] is None


@pytest.mark.parametrize("value", ["not json", '"one"', "[]", '["a", "a"]', '["Bad Name"]', json.dumps(["c"] * 11)])
def test_bad_allow_collections_are_refused(api, banned, redis_client, value):
    collection, vectors = banned
    before = store_snapshot(redis_client)
    response = api.http.post(api.url(f"/v1/collections/{collection}/checks"),
                             data={"vector": json.dumps(vectors[0].tolist()), "allow_collections": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid_allow_collections", "invalid_collection_name")
    assert store_snapshot(redis_client) == before

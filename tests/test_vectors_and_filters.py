"""Precomputed vectors in, queries by vector, min_score and metadata filters."""

import base64
import json

import numpy as np
import pytest

from shared import keys
from shared.queue import INDEX_QUEUE, QUERY_QUEUE
from tests.conftest import DEFAULT_MODEL, natural_images, store_snapshot


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, 512)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def store_vectors(api, collection, items, **extra):
    # json.dumps, not requests' json=: the bad-input cases send NaN and Infinity literals on purpose.
    return api.http.post(api.url(f"/v1/collections/{collection}/vectors"), data=json.dumps({"items": items, **extra}),
                         headers={"Content-Type": "application/json"})


def query_by_vector(api, collection, vector, **form):
    data = {"vector": json.dumps(vector.tolist()) if isinstance(vector, np.ndarray) else vector}
    data.update({name: json.dumps(value) if isinstance(value, dict) else str(value) for name, value in form.items()})
    task = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/queries"), data=data))
    assert task["state"] == "succeeded", task
    return task["result"]["matches"]


@pytest.fixture
def tenants_collection(api, collection):
    """200 stored vectors; tenant "rare" on every 20th, "common" on the rest."""
    vectors = unit_vectors(200, seed=5)
    items = [{"id": f"v/{n}", "vector": vectors[n].tolist(),
              "metadata": {"tenant": "rare" if n % 20 == 0 else "common", "n": n}} for n in range(200)]
    response = store_vectors(api, collection, items)
    assert response.status_code == 201, response.text
    assert response.json()["stored"] == 200 and response.json()["replaced"] == 0
    return collection, vectors


def test_query_by_vector_ranks_like_exact_search(api, tenants_collection):
    collection, vectors = tenants_collection
    query = vectors[7] + 0.1 * unit_vectors(1, seed=9)[0]
    expected = np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:10]
    matches = query_by_vector(api, collection, query, k=10)
    assert [m["id"] for m in matches] == [f"v/{n}" for n in expected]
    assert matches[0]["id"] == "v/7" and matches[0]["metadata"] == {"tenant": "common", "n": 7}

    as_base64 = base64.b64encode(query.astype("<f4").tobytes()).decode()
    assert [m["id"] for m in query_by_vector(api, collection, as_base64, k=10)] == [m["id"] for m in matches]


def test_filter_returns_k_matching_images_when_they_exist(api, tenants_collection):
    collection, vectors = tenants_collection
    matches = query_by_vector(api, collection, vectors[3], k=10, filter={"tenant": "rare"})
    assert len(matches) == 10 == sum(1 for n in range(200) if n % 20 == 0)
    assert all(m["metadata"]["tenant"] == "rare" for m in matches)
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert query_by_vector(api, collection, vectors[3], k=5, filter={"tenant": "nobody"}) == []
    assert query_by_vector(api, collection, vectors[3], k=3, filter={"n": 40, "tenant": "rare"})[0]["id"] == "v/40"
    assert query_by_vector(api, collection, vectors[3], k=3, filter={"n": "40"}) == []  # types count


def test_min_score_cuts_the_ranking(api, tenants_collection):
    collection, vectors = tenants_collection
    matches = query_by_vector(api, collection, vectors[11], k=50, min_score=0.5)
    assert [m["id"] for m in matches] == ["v/11"]  # random 512-d vectors are near-orthogonal
    assert matches[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_storing_a_vector_again_replaces_it(api, collection):
    vector = unit_vectors(1, seed=1)[0]
    store_vectors(api, collection, [{"id": "x", "vector": vector.tolist(), "metadata": {"v": 1}}])
    response = store_vectors(api, collection, [{"id": "x", "vector": (-vector).tolist(), "metadata": {"v": 2}}])
    assert response.json()["replaced"] == 1
    [match] = query_by_vector(api, collection, -vector, k=5)
    assert match["metadata"] == {"v": 2} and match["score"] == pytest.approx(1.0, abs=1e-5)


def test_an_image_query_finds_vectors_stored_with_the_workers_descriptor(api, collection):
    """Vectors stored for a new collection take the running worker's model and weights."""
    response = store_vectors(api, collection, [{"id": "x", "vector": unit_vectors(1, seed=2)[0].tolist()}])
    assert response.json()["weights"] == "random(seed=0)"
    task = api.wait(api.query(collection, natural_images()["moon"], k=3))
    assert task["state"] == "succeeded" and [m["id"] for m in task["result"]["matches"]] == ["x"]


GOOD = unit_vectors(1, seed=3)[0].tolist()


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"items": [{"id": "a", "vector": GOOD[:100]}]}, 422, "vector_dimension_mismatch"),
        ({"items": [{"id": "a", "vector": [float("nan")] + GOOD[1:]}]}, 422, "vector_not_finite"),
        ({"items": [{"id": "a", "vector": [float("inf")] + GOOD[1:]}]}, 422, "vector_not_finite"),
        ({"items": [{"id": "a", "vector": [1e300] * 512}]}, 422, "vector_not_finite"),
        ({"items": [{"id": "a", "vector": [0.0] * 512}]}, 422, "zero_vector"),
        ({"items": [{"id": "a", "vector": base64.b64encode(np.full(512, np.nan, "<f4").tobytes()).decode()}]},
         422, "vector_not_finite"),
        ({"items": [{"id": "a", "vector": "not base64!"}]}, 400, "invalid_vector"),
        ({"items": [{"id": "a", "vector": ["x"] * 512}]}, 400, "invalid_vector"),
        ({"items": [{"id": "ok", "vector": GOOD}, {"id": "a", "vector": GOOD[:3]}]}, 422, "vector_dimension_mismatch"),
        ({"items": [{"id": "a", "vector": GOOD}, {"id": "a", "vector": GOOD}]}, 400, "duplicate_image_id"),
        ({"items": [{"id": "../x", "vector": GOOD}]}, 400, "invalid_image_id"),
        ({"items": [{"id": "a", "vector": GOOD, "metadata": [1]}]}, 400, "invalid_metadata"),
        ({"items": []}, 400, "invalid_json"),
        ({"vectors": [GOOD]}, 400, "invalid_json"),
    ],
)
def test_bad_vectors_are_refused_and_nothing_is_stored(api, collection, redis_client, body, status, code):
    before = store_snapshot(redis_client)
    response = store_vectors(api, collection, body["items"]) if "items" in body else \
        api.http.post(api.url(f"/v1/collections/{collection}/vectors"), json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert store_snapshot(redis_client) == before


@pytest.mark.parametrize(
    "form, files, status, code",
    [
        ({"vector": json.dumps(GOOD[:10])}, None, 422, "vector_dimension_mismatch"),
        ({"vector": json.dumps([0.0] * 512)}, None, 422, "zero_vector"),
        ({"vector": "[1, 2"}, None, 400, "invalid_vector"),
        ({"vector": json.dumps(GOOD)}, {"image": ("a.jpg", natural_images()["moon"])}, 400, "ambiguous_query_input"),
        ({"vector": json.dumps(GOOD), "min_score": "2"}, None, 400, "invalid_min_score"),
        ({"vector": json.dumps(GOOD), "min_score": "nan"}, None, 400, "invalid_min_score"),
        ({"vector": json.dumps(GOOD), "filter": "[1]"}, None, 400, "invalid_filter"),
        ({"vector": json.dumps(GOOD), "filter": '{"a": {"b": 1}}'}, None, 400, "invalid_filter"),
        ({}, None, 400, "image_missing"),
    ],
)
def test_bad_queries_are_refused_before_enqueueing(api, collection, redis_client, form, files, status, code):
    before = store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE), redis_client.llen(QUERY_QUEUE)
    response = api.http.post(api.url(f"/v1/collections/{collection}/queries"), data=form, files=files)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE), redis_client.llen(QUERY_QUEUE)) == before


def test_dropping_a_collection_lets_it_change_descriptor(api, collection, redis_client):
    from lookalike_client import Client

    client = Client(api.base_url)
    vectors = unit_vectors(3, seed=31)
    stored = store_vectors(api, collection, [{"id": f"v/{n}", "vector": v.tolist()} for n, v in enumerate(vectors)],
                           model="other-model", weights="other-weights")
    assert stored.status_code == 201
    assert [m["id"] for m in query_by_vector(api, collection, vectors[0], k=1)] == ["v/0"]  # the replica holds it
    refused = api.wait(api.index(collection, natural_images()["moon"], "moon"))
    assert refused["state"] == "failed" and refused["error"]["code"] == "descriptor_mismatch"

    dropped = api.http.delete(api.url(f"/v1/collections/{collection}"))
    assert dropped.status_code == 200 and dropped.json() == {"collection": collection, "deleted": True, "images": 3}
    assert api.http.get(api.url(f"/v1/collections/{collection}")).status_code == 404
    assert [key for key in redis_client.scan_iter(keys.collection_keys_pattern(collection))
            if not key.endswith((b":changes", b":seq"))] == []

    assert api.wait(api.index(collection, natural_images()["moon"], "moon"))["state"] == "succeeded"
    assert client.collection(collection)["model"] == DEFAULT_MODEL
    assert [m["id"] for m in client.query(collection, natural_images()["moon"], k=10)["matches"]] == ["moon"]
    assert api.http.delete(api.url(f"/v1/collections/{collection}-never")).status_code == 404

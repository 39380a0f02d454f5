"""Whitening learned per collection and query expansion, through the real API and worker.

Vectors are stored through the API (no forward passes), so a collection big enough to learn
from costs milliseconds; the scores are checked against the same maths done here.
"""

import time

import numpy as np
import pytest

from shared import keys
from shared.settings import Settings
from tests.conftest import natural_images, store_snapshot
from tests.test_vectors_and_filters import store_vectors, unit_vectors
from worker.descriptors import Whitening, l2_normalise

MIN_IMAGES = Settings.model_fields["whitening_min_images"].default
GROWTH = Settings.model_fields["whitening_relearn_growth"].default


def put_vectors(api, collection: str, vectors: np.ndarray, start: int = 0) -> None:
    items = [{"id": f"v{start + n}", "vector": vector.tolist()} for n, vector in enumerate(vectors)]
    response = store_vectors(api, collection, items)
    assert response.status_code == 201, response.text


def query_result(api, collection: str, vector: np.ndarray, **options) -> dict:
    return api.client.query(collection, vector=vector.tolist(), **options)


def learned_whitening(api, collection: str, collection_size: int, timeout: float = 30) -> dict:
    """The collection's whitening once one learned at ``collection_size`` images is in place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = api.client.collection(collection)
        if info["whitening"] and info["whitening"]["collection_size"] == collection_size:
            return info["whitening"]
        time.sleep(0.1)
    raise AssertionError(f"no whitening learned at {collection_size} images: {info}")


def whitened_by(api, collection: str, vector: np.ndarray, whitening: dict | None, timeout: float = 30) -> dict:
    """A query's result once it is answered in ``whitening`` (None: unwhitened): a worker answers in the old
    whitening while it loads the collection in the new one."""
    deadline = time.monotonic() + timeout
    while True:
        result = query_result(api, collection, vector, k=5)
        if result["whitened"] == whitening or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def ranking(database: np.ndarray, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    scores = database @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [f"v{row}" for row in order], scores[order]


def assert_same_ranking(matches: list[dict], ids: list[str], scores: np.ndarray, atol: float) -> None:
    """The same best match, the same set of ids and the same scores in order; neighbours whose scores
    differ by float rounding only may swap places."""
    assert matches[0]["id"] == ids[0] and {m["id"] for m in matches} == set(ids)
    np.testing.assert_allclose([m["score"] for m in matches], scores, atol=atol)


def test_whitening_is_learned_used_relearned_as_the_collection_grows_and_forgotten(api, collection):
    vectors = unit_vectors(MIN_IMAGES + 20, seed=40)
    put_vectors(api, collection, vectors)
    query = l2_normalise(vectors[3] + 0.05 * unit_vectors(1, seed=41)[0])
    plain = query_result(api, collection, query, k=5)
    assert plain["whitening"] is False and plain["whitened"] is None
    assert_same_ranking(plain["matches"], *ranking(vectors, query, 5), atol=1e-5)

    settings = api.client.set_collection(collection, whitening=True)["settings"]
    assert settings["whitening"] is True and settings["match_threshold"] == 0.9
    query_result(api, collection, query, k=5)  # the first query finds it due and starts learning
    learned = learned_whitening(api, collection, len(vectors))
    assert learned["learned_from"] == len(vectors) and learned["dimensions"] == len(vectors) - 1

    whitened = whitened_by(api, collection, query, learned)
    assert whitened["whitened"] == learned
    expected = Whitening.learn(vectors)  # the same maths from the same vectors (in another order)
    ids, scores = ranking(expected.apply(vectors), expected.apply(query[None])[0], 5)
    assert_same_ranking(whitened["matches"], ids, scores, atol=1e-4)
    assert [m["score"] for m in whitened["matches"]] != [m["score"] for m in plain["matches"]]

    grown = int(GROWTH * len(vectors))
    put_vectors(api, collection, unit_vectors(grown - len(vectors), seed=42), start=len(vectors))
    query_result(api, collection, query, k=1)  # grown past GROWTH x: learned again
    assert learned_whitening(api, collection, grown)["learned_from"] == grown

    api.client.set_collection(collection, whitening=False)
    assert api.client.collection(collection)["whitening"] is None
    again = whitened_by(api, collection, query, None)
    assert again["whitened"] is None and again["matches"][0] == plain["matches"][0]


def test_a_small_collection_is_not_whitened(api, collection, redis_client):
    vectors = unit_vectors(MIN_IMAGES // 2, seed=43)
    put_vectors(api, collection, vectors)
    api.client.set_collection(collection, whitening=True)
    for _ in range(2):
        assert query_result(api, collection, vectors[0], k=1)["whitened"] is None
    # A query that found learning due would have taken the claim before it finished, and the learning
    # stores its whitening before giving the claim back: no claim now, and no whitening after that,
    # means none was started (no need to sleep and hope it would have finished).
    assert not redis_client.exists(keys.collection_whitening_claim(collection))
    assert api.client.collection(collection)["whitening"] is None


def test_query_expansion_averages_the_query_with_its_best_matches(api, collection):
    vectors = unit_vectors(30, seed=44)
    put_vectors(api, collection, vectors)
    query = l2_normalise(0.8 * vectors[7] + 0.6 * vectors[8])
    result = query_result(api, collection, query, k=5, expand=2)
    assert result["expand"] == 2
    top_two, _ = ranking(vectors, query, 2)
    assert top_two == ["v7", "v8"]
    expanded = l2_normalise(query + vectors[[7, 8]].sum(axis=0))
    assert_same_ranking(result["matches"], *ranking(vectors, expanded, 5), atol=1e-5)
    # expansion pulled v8 up: its score rose more than the plain query's best match's
    plain = {m["id"]: m["score"] for m in query_result(api, collection, query, k=5)["matches"]}
    scores = {m["id"]: m["score"] for m in result["matches"]}
    assert scores["v8"] - plain["v8"] > scores["v7"] - plain["v7"]


def test_query_expansion_through_an_image_query(api, collection, store):
    images = natural_images()
    names = ("astronaut", "camera", "coffee", "rocket")
    for name in names:
        api.wait(api.index(collection, images[name], image_id=name))
    stored = {image_id: vector for chunk in store.scan_vectors(collection, 512, 100) for image_id, vector in chunk}
    assert set(stored) == set(names)

    def query(expand: int) -> dict:
        task = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/queries"),
                                      files={"image": ("q.jpg", images["astronaut"])},
                                      data={"expand": str(expand), "k": str(len(names))}))
        assert task["state"] == "succeeded", task
        assert task.get("expand", 0) == expand and task["result"]["expand"] == expand, task
        return {m["id"]: m["score"] for m in task["result"]["matches"]}

    # The query image is indexed: its vector is astronaut's stored one, its two best matches astronaut and
    # its nearest other photograph; expanded, the query is their average (astronaut counted twice).
    probe = stored["astronaut"]
    plain_expected = {image_id: float(vector @ probe) for image_id, vector in stored.items()}
    best_two = sorted(plain_expected, key=plain_expected.get, reverse=True)[:2]
    assert best_two[0] == "astronaut"
    expanded_probe = l2_normalise(probe + stored[best_two[0]] + stored[best_two[1]])
    expanded_expected = {image_id: float(vector @ expanded_probe) for image_id, vector in stored.items()}
    # Expansion moves every score by far more than the tolerance (the scores come back to 6 decimals, and a
    # query's vector is its stored one to float rounding), so an unexpanded answer cannot pass for expanded.
    atol = 2e-5
    assert min(abs(expanded_expected[i] - plain_expected[i]) for i in names) > 10 * atol

    plain, expanded = query(0), query(2)
    assert set(plain) == set(expanded) == set(names)
    for image_id in names:
        assert plain[image_id] == pytest.approx(plain_expected[image_id], abs=atol), ("plain", image_id)
        assert expanded[image_id] == pytest.approx(expanded_expected[image_id], abs=atol), ("expanded", image_id)
    assert expanded["astronaut"] < 1.0 - 10 * atol  # no longer the query itself
    assert expanded[best_two[1]] > plain[best_two[1]]  # pulled towards the neighbour it was averaged with


@pytest.mark.parametrize("form", [{"expand": "11"}, {"expand": "-1"}, {"expand": "two"}, {"expand": "1.5"}])
def test_bad_expand_is_refused_and_changes_nothing(api, collection, redis_client, form):
    put_vectors(api, collection, unit_vectors(3, seed=45))
    before = store_snapshot(redis_client)
    response = api.http.post(api.url(f"/v1/collections/{collection}/queries"),
                             data={"vector": str(unit_vectors(1, seed=46)[0].tolist()), **form})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_expand"
    assert store_snapshot(redis_client) == before


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_whitening_setting_is_refused(api, collection, value):
    response = api.http.put(api.url(f"/v1/collections/{collection}"), json={"whitening": value})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_collection_settings"
    assert api.http.get(api.url(f"/v1/collections/{collection}")).status_code == 404


def test_the_index_task_that_fills_a_collection_starts_its_whitening(api, collection):
    put_vectors(api, collection, unit_vectors(MIN_IMAGES - 1, seed=47))
    api.client.set_collection(collection, whitening=True)
    assert api.client.collection(collection)["whitening"] is None  # one image short, and nothing asked
    task = api.wait(api.index(collection, natural_images()["coffee"], image_id="coffee"))
    assert task["state"] == "succeeded"
    learned = learned_whitening(api, collection, MIN_IMAGES)  # no query needed
    assert learned["learned_from"] == MIN_IMAGES


def test_hashes_banked_alone_do_not_count_towards_learning_a_whitening(api, worker, collection, redis_client):
    """Entries count hashes banked without images, which have no vector: a collection of MIN_IMAGES hashes and
    three vectors is not whitened from three vectors (which would keep two dimensions); the worker says so and
    keeps its claim rather than trying again on every query."""
    assert api.http.put(api.url(f"/v1/collections/{collection}"), json={"whitening": True}).status_code == 200
    rng = np.random.default_rng(31)
    banked = [{"id": f"h{n}", "hash": rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()}
              for n in range(MIN_IMAGES)]
    assert api.http.post(api.url(f"/v1/collections/{collection}/hashes"), json={"items": banked}).status_code == 201
    vectors = unit_vectors(3, seed=31)
    put_vectors(api, collection, vectors)
    said = f"whitening of {collection} not learned: 3 of its {MIN_IMAGES + 3} entries have vectors"
    deadline = time.monotonic() + 60
    while said not in worker.output():  # a query notices the collection is due and starts the learning
        result = query_result(api, collection, vectors[0], k=3)
        assert time.monotonic() < deadline, "the worker never decided"
        time.sleep(0.2)
    assert redis_client.hget(keys.collection_whitening(collection), "learned_at") is None
    assert result["whitened"] is None and result["matches"][0]["id"] == "v0"
    claim = keys.collection_whitening_claim(collection)
    assert redis_client.exists(claim) and redis_client.ttl(claim) > 0  # kept until it expires

"""Search replicas against a real Redis: incremental changes, trimmed streams, and agreement with a full load."""

import logging
import uuid

import numpy as np
import pytest
import redis

from shared.settings import Settings
from shared.store import Descriptor, Store
from worker.replica import Replicas

DIMENSION = 8
DESCRIPTOR = Descriptor(model="test-model", dimension=DIMENSION, weights="test-weights")


def unit(rng) -> np.ndarray:
    vector = rng.standard_normal(DIMENSION).astype(np.float32)
    return vector / np.linalg.norm(vector)


def exact_ranking(store: Store, collection: str, query: np.ndarray) -> list[tuple[str, float]]:
    snapshot = store.load_collection(collection, DIMENSION)
    scores = snapshot.vectors @ query
    order = np.argsort(-scores, kind="stable")
    return [(snapshot.ids[row], float(scores[row])) for row in order]


def assert_same_ranking(found: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [image_id for image_id, _ in found] == [image_id for image_id, _ in expected]
    np.testing.assert_allclose([score for _, score in found], [score for _, score in expected], atol=1e-6)


@pytest.fixture
def name() -> str:
    return f"replica-{uuid.uuid4().hex[:8]}"


def test_replica_follows_puts_replacements_and_deletes(store, name):
    rng = np.random.default_rng(0)
    replicas = Replicas(store, DIMENSION)
    vectors = {f"img/{n}": unit(rng) for n in range(20)}
    for image_id, vector in vectors.items():
        store.save_image(name, image_id, vector, {}, DESCRIPTOR)
    query = unit(rng)
    assert_same_ranking(replicas.search(name, query, 5).matches, exact_ranking(store, name, query)[:5])

    store.save_image(name, "img/new", query, {}, DESCRIPTOR)  # identical to the query
    [(best, score)] = replicas.search(name, query, 1).matches
    assert best == "img/new" and score == pytest.approx(1.0, abs=1e-6)
    store.save_image(name, "img/new", -query, {}, DESCRIPTOR)  # replaced: now the opposite
    worst, score = replicas.search(name, query, 21).matches[-1]
    assert worst == "img/new" and score == pytest.approx(-1.0, abs=1e-6)
    store.delete_image(name, "img/new")
    store.delete_image(name, "img/3")
    found = replicas.search(name, query, 100).matches
    assert {image_id for image_id, _ in found} == set(vectors) - {"img/3"}
    assert_same_ranking(found, exact_ranking(store, name, query))


def test_random_changes_leave_the_replica_equal_to_a_full_load(store, name):
    rng = np.random.default_rng(1)
    replicas = Replicas(store, DIMENSION)
    query = unit(rng)
    replicas.search(name, query, 10)  # replica of the empty collection
    for step in range(300):
        image_id = f"img/{rng.integers(40)}"
        if rng.random() < 0.3:
            store.delete_image(name, image_id)
        else:
            store.save_image(name, image_id, unit(rng), {}, DESCRIPTOR)
        if step % 37 == 0:
            assert_same_ranking(replicas.search(name, query, 100).matches, exact_ranking(store, name, query))
    assert_same_ranking(replicas.search(name, query, 100).matches, exact_ranking(store, name, query))


def test_a_replica_behind_a_trimmed_stream_reloads(redis_server, name, caplog):
    client = redis.Redis.from_url(redis_server.url)
    short = Store(client, 3600, 3600, change_stream_length=100)  # trimmed in whole stream nodes of 100
    rng = np.random.default_rng(2)
    replicas = Replicas(short, DIMENSION)
    query = unit(rng)
    short.save_image(name, "first", unit(rng), {}, DESCRIPTOR)
    replicas.search(name, query, 10)
    for n in range(400):
        short.save_image(name, f"img/{n}", unit(rng), {}, DESCRIPTOR)
    assert client.xlen(f"lookalike:col:{name}:changes") < 400  # the replica's position was trimmed away
    with caplog.at_level(logging.WARNING, logger="worker.replica"):
        found = replicas.search(name, query, 500).matches
    assert "reloading" in caplog.text
    assert_same_ranking(found, exact_ranking(short, name, query))


def test_descriptor_mismatch_is_refused_and_changes_nothing(store, name):
    rng = np.random.default_rng(3)
    store.save_image(name, "a", unit(rng), {}, DESCRIPTOR)
    other = Descriptor(model="test-model", dimension=DIMENSION, weights="other-weights")
    from shared.errors import LookalikeError

    with pytest.raises(LookalikeError) as failure:
        store.save_image(name, "b", unit(rng), {}, other)
    assert failure.value.code == "descriptor_mismatch"
    assert store.load_collection(name, DIMENSION).ids == ["a"]
    assert store.load_collection(name, DIMENSION).seq == 1


def test_settings_default_stream_length_is_used(store):
    assert store.change_stream_length == Settings().change_stream_length


def test_min_score_and_collection_size(store, name):
    rng = np.random.default_rng(4)
    query = unit(rng)
    store.save_image(name, "same", query, {}, DESCRIPTOR)
    store.save_image(name, "opposite", -query, {}, DESCRIPTOR)
    found = Replicas(store, DIMENSION).search(name, query, 10, min_score=0.0)
    assert [image_id for image_id, _ in found.matches] == ["same"] and found.searched == 2

"""Search replicas against a real Redis: incremental changes, trimmed streams, and agreement with a full load."""

import logging
import threading
import time
import uuid

import numpy as np
import pytest
import redis

from shared import keys
from shared.settings import Settings
from shared.store import Descriptor, Store
import worker.replica
from worker.replica import Replicas
from worker.search import RowsById

DIMENSION = 8
DESCRIPTOR = Descriptor(model="test-model", dimension=DIMENSION, weights="test-weights")


def unit(rng) -> np.ndarray:
    vector = rng.standard_normal(DIMENSION).astype(np.float32)
    return vector / np.linalg.norm(vector)


def stored(store: Store, collection: str) -> dict[str, np.ndarray]:
    return {image_id: vector for chunk in store.scan_vectors(collection, DIMENSION, 1000) for image_id, vector in chunk}


def exact_ranking(store: Store, collection: str, query: np.ndarray, transform=None) -> list[tuple[str, float]]:
    """Every stored image by score, best first; ``transform`` (e.g. a whitening) applied to both sides first."""
    vectors = stored(store, collection)
    ids = list(vectors)
    matrix = np.stack([vectors[image_id] for image_id in ids]) if ids else np.empty((0, DIMENSION), np.float32)
    if transform is not None:
        matrix, query = transform(matrix), transform(query[None])[0]
    scores = matrix @ query
    order = np.argsort(-scores, kind="stable")
    return [(ids[row], float(scores[row])) for row in order]


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
    assert client.xlen(keys.collection_changes(name)) < 400  # the replica's position was trimmed away
    with caplog.at_level(logging.WARNING, logger="worker.replica"):
        found = replicas.search(name, query, 500).matches
    assert "reloading" in caplog.text
    assert_same_ranking(found, exact_ranking(short, name, query))


def test_a_replica_ahead_of_a_failed_over_store_reloads(redis_server, store, name, caplog):
    """A failover to a replica that had not received the last writes: the store's change numbers go back, and
    the replica, which applied those writes, must not keep them."""
    client = redis.Redis.from_url(redis_server.url)
    rng = np.random.default_rng(4)
    replicas = Replicas(store, DIMENSION)
    query = unit(rng)
    for n in range(10):
        store.save_image(name, f"img/{n}", unit(rng), {}, DESCRIPTOR)
    assert len(replicas.search(name, query, 100).matches) == 10  # the replica applied all ten
    # What the promoted replica holds: the last three writes never reached it.
    events = client.xrange(keys.collection_changes(name))
    client.xdel(keys.collection_changes(name), *[event_id for event_id, _ in events[-3:]])
    client.set(keys.collection_change_seq(name), 7)
    for n in (7, 8, 9):
        for key in (keys.collection_vectors(name), keys.collection_images(name), keys.collection_pdq(name)):
            client.hdel(key, f"img/{n}")
    store.save_image(name, "after", unit(rng), {}, DESCRIPTOR)  # the next write: change number 8 again
    with caplog.at_level(logging.WARNING, logger="worker.replica"):
        found = replicas.search(name, query, 100).matches
    assert "reloading" in caplog.text
    assert_same_ranking(found, exact_ranking(store, name, query))
    assert {image_id for image_id, _ in found} == {*(f"img/{n}" for n in range(7)), "after"}


class SlowScanStore(Store):
    """A store whose vector scans run ``between_chunks`` after each chunk: the test's ingest, or a gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.between_chunks = lambda: None
        self.scans = 0

    def scan_vectors(self, collection, dimension, chunk):
        self.scans += 1
        for part in super().scan_vectors(collection, dimension, chunk):
            yield part
            self.between_chunks()


def test_a_query_waits_a_bounded_time_for_a_load_and_never_answers_from_part_of_it(redis_server, name, monkeypatch):
    from shared.errors import LookalikeError

    monkeypatch.setattr(worker.replica, "LOAD_CHUNK", 200)
    store = SlowScanStore(redis.Redis.from_url(redis_server.url), 3600, 3600)
    rng = np.random.default_rng(5)
    store.save_images(name, [(f"img/{n}", unit(rng), {}, None, None) for n in range(1000)], DESCRIPTOR)
    gate = threading.Event()
    store.between_chunks = lambda: gate.wait(30)  # the load stops after its first chunk until the test says
    replicas = Replicas(store, DIMENSION, load_wait_seconds=0.5)
    query = unit(rng)
    for _ in range(2):  # each query waits its half second, then is told: no answer from part of the collection
        with pytest.raises(LookalikeError) as waited:
            replicas.search(name, query, 10)
        assert waited.value.code == "collection_loading"
        assert waited.value.details["vectors"] == 1000 and 0 < waited.value.details["vectors_loaded"] < 1000
    gate.set()
    found = replicas.search(name, query, 1000).matches
    assert store.scans == 1  # one load, in the background, whatever the queries waiting for it
    assert_same_ranking(found, exact_ranking(store, name, query))


def test_a_load_converges_under_ingest_beyond_the_stream_window(redis_server, name, caplog, monkeypatch):
    monkeypatch.setattr(worker.replica, "LOAD_CHUNK", 200)
    store = SlowScanStore(redis.Redis.from_url(redis_server.url), 3600, 3600, change_stream_length=1000)
    rng = np.random.default_rng(6)
    store.save_images(name, [(f"img/{n}", unit(rng), {}, None, None) for n in range(2000)], DESCRIPTOR)
    written = 0

    def ingest() -> None:  # 300 writes after every chunk the load reads, 3,000 in all: three stream windows
        nonlocal written
        for _ in range(300 if written < 3000 else 0):
            if written % 10 == 9:
                store.delete_image(name, f"img/{written}")
            else:
                store.save_image(name, f"new/{written}", unit(rng), {}, DESCRIPTOR)
            written += 1

    store.between_chunks = ingest
    replicas = Replicas(store, DIMENSION)
    query = unit(rng)
    with caplog.at_level(logging.WARNING, logger="worker.replica"):
        replicas.search(name, query, 10)
    assert "reloading" not in caplog.text and store.scans == 1  # converged in one load, not reloading forever
    assert written == 3000 and store.redis.xlen(keys.collection_changes(name)) < 3000  # the stream kept less
    assert_same_ranking(replicas.search(name, query, 10_000).matches, exact_ranking(store, name, query))


def test_descriptor_mismatch_is_refused_and_changes_nothing(store, name):
    rng = np.random.default_rng(3)
    store.save_image(name, "a", unit(rng), {}, DESCRIPTOR)
    other = Descriptor(model="test-model", dimension=DIMENSION, weights="other-weights")
    from shared.errors import LookalikeError

    with pytest.raises(LookalikeError) as failure:
        store.save_image(name, "b", unit(rng), {}, other)
    assert failure.value.code == "descriptor_mismatch"
    assert list(stored(store, name)) == ["a"]
    assert store.change_position(name)[0] == 1


def test_settings_default_stream_length_is_used(store):
    assert store.change_stream_length == Settings().change_stream_length


def test_min_score_and_collection_size(store, name):
    rng = np.random.default_rng(4)
    query = unit(rng)
    store.save_image(name, "same", query, {}, DESCRIPTOR)
    store.save_image(name, "opposite", -query, {}, DESCRIPTOR)
    found = Replicas(store, DIMENSION).search(name, query, 10, min_score=0.0)
    assert [image_id for image_id, _ in found.matches] == ["same"] and found.searched == 2


# --- HNSW above exact_max, and snapshots -------------------------------------------------------

from worker.replica import HnswIndex  # noqa: E402


def clustered(count: int, seed: int, dimension: int = DIMENSION) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((10, dimension))
    vectors = centres[rng.integers(10, size=count)] + 0.3 * rng.standard_normal((count, dimension))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill(store: Store, name: str, vectors: np.ndarray, prefix: str = "v") -> None:
    for number, vector in enumerate(vectors):
        store.save_image(name, f"{prefix}/{number}", vector, {}, DESCRIPTOR)


def recall_at_10(found: list[tuple[str, float]], expected: list[tuple[str, float]]) -> float:
    return len({i for i, _ in found[:10]} & {i for i, _ in expected[:10]}) / 10


def test_hnsw_and_exact_agree_on_small_data(store, name):
    fill(store, name, clustered(400, seed=5))
    replicas = Replicas(store, DIMENSION, exact_max=100)
    queries = clustered(20, seed=6)
    first = replicas.search(name, queries[0], 10).matches  # exact while the graph is built
    assert_same_ranking(first, exact_ranking(store, name, queries[0])[:10])
    replicas.wait_for_builds()
    recalls = [recall_at_10(replicas.search(name, q, 10).matches, exact_ranking(store, name, q)) for q in queries]
    assert isinstance(replicas._replicas[name].index, HnswIndex)
    assert np.mean(recalls) >= 0.95
    for q in queries[:5]:  # scores are cosine similarities in both
        (best, score), = replicas.search(name, q, 1).matches
        assert (best, score) == (exact_ranking(store, name, q)[0][0],
                                 pytest.approx(exact_ranking(store, name, q)[0][1], abs=1e-5))


def test_hnsw_replica_follows_puts_replacements_and_deletes(store, name):
    vectors = clustered(300, seed=7)
    fill(store, name, vectors)
    replicas = Replicas(store, DIMENSION, exact_max=50)
    probe = vectors[10]
    assert replicas.search(name, probe, 1).matches[0][0] == "v/10"
    replicas.wait_for_builds()
    assert isinstance(replicas._replicas[name].index, HnswIndex)
    store.delete_image(name, "v/10")
    assert "v/10" not in {i for i, _ in replicas.search(name, probe, 50).matches}
    store.save_image(name, "v/11", -probe, {}, DESCRIPTOR)  # replaced: now far from the probe
    store.save_image(name, "fresh", probe, {}, DESCRIPTOR)  # reuses the deleted slot
    found = replicas.search(name, probe, 300)
    assert found.matches[0][0] == "fresh" and found.searched == 300
    assert found.matches[-1][0] == "v/11"


def test_a_restarted_worker_loads_the_snapshot_and_catches_up(store, name, tmp_path, caplog):
    fill(store, name, clustered(200, seed=8))
    first = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path)
    probe = clustered(1, seed=9)[0]
    first.search(name, probe, 10)  # starts the HNSW build, which saves a snapshot when done
    first.wait_for_builds()
    [snapshot] = (tmp_path / name).iterdir()
    assert snapshot.name == f"{200:015d}" and {p.name for p in snapshot.iterdir()} == {"graph.bin", "replica.json"}

    store.delete_image(name, "v/0")  # changes after the snapshot
    store.save_image(name, "late", probe, {}, DESCRIPTOR)
    restarted = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="worker.replica"):
        found = restarted.search(name, probe, 200)
    assert "snapshot at change 200 of 202 loaded" in caplog.text
    assert found.matches[0][0] == "late" and found.searched == 200
    assert "v/0" not in {i for i, _ in found.matches}


def test_a_snapshot_ahead_of_the_store_is_ignored(store, name, tmp_path, caplog):
    fill(store, name, clustered(120, seed=10))
    builder = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path)
    builder.search(name, clustered(1, seed=1)[0], 5)
    builder.wait_for_builds()
    other = f"{name}-recreated"
    (tmp_path / name).rename(tmp_path / other)  # a snapshot at change 120 for a collection at change 60
    fill(store, other, clustered(60, seed=11))
    with caplog.at_level(logging.INFO, logger="worker.replica"):
        found = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path).search(
            other, clustered(1, seed=1)[0], 100)
    assert "snapshot at change" not in caplog.text
    assert found.searched == 60


def test_rows_stay_contiguous_through_deletes_and_growth():
    rows = RowsById(2, np.float32)
    for n in range(20):  # past the first capacity of 16
        rows.put(f"i{n}", np.array([n, 1], np.float32))
    rows.delete("i1")
    rows.put("i2", np.array([9, 9], np.float32))
    assert len(rows) == 19 and rows.ids[:3] == ["i0", "i19", "i2"]
    np.testing.assert_array_equal(rows.matrix[1], [19, 1])
    np.testing.assert_array_equal(rows.row_of("i2"), [9, 9])
    assert rows.row_of("i1") is None and rows.matrix.shape == (19, 2)


def test_snapshots_are_renewed_after_enough_changes(store, name, tmp_path):
    fill(store, name, clustered(100, seed=12))
    replicas = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path, snapshot_every_changes=10)
    probe = clustered(1, seed=13)[0]
    replicas.search(name, probe, 5)
    replicas.wait_for_builds()
    fill(store, name, clustered(12, seed=14), prefix="more")
    replicas.search(name, probe, 5)
    replicas.wait_for_builds()  # snapshots are written in the background
    assert [p.name for p in (tmp_path / name).iterdir()] == [f"{112:015d}"]  # the older one is gone


def test_queries_go_on_while_a_snapshot_is_written(store, name, tmp_path, monkeypatch):
    """A snapshot is written by a forked copy of the process, so a query never waits for it (hnswlib's save
    holds the GIL); changes made meanwhile are in the live replica, and in the next snapshot."""
    fill(store, name, clustered(200, seed=20))
    replicas = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path / "snapshots", snapshot_every_changes=10)
    probe = clustered(1, seed=21)[0]
    replicas.search(name, probe, 5)
    replicas.wait_for_builds()  # an HNSW replica, and its first snapshot
    started, release = tmp_path / "writing", tmp_path / "release"  # files: the writer is another process
    save = HnswIndex.save

    def slow_save(index, *args):  # a snapshot that takes as long as the test says
        started.touch()
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        save(index, *args)

    monkeypatch.setattr(HnswIndex, "save", slow_save)
    fill(store, name, clustered(12, seed=22), prefix="more")  # past snapshot_every_changes: the next one starts
    replicas.search(name, probe, 5)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "no snapshot started"
        time.sleep(0.01)
    # While it is written: puts, replacements and deletes, each seen by the next query, none waiting for the write.
    store.save_image(name, "new", probe, {}, DESCRIPTOR)
    store.save_image(name, "v/1", -probe, {}, DESCRIPTOR)
    store.delete_image(name, "v/2")
    answered = []
    asker = threading.Thread(target=lambda: answered.append(replicas.search(name, probe, 300).matches))
    asker.start()
    asker.join(30)
    assert answered, "a query waited for the snapshot"
    assert_same_ranking(answered[0], exact_ranking(store, name, probe))
    release.touch()
    replicas.wait_for_builds()
    assert [p.name for p in (tmp_path / "snapshots" / name).iterdir()] == [f"{212:015d}"]  # the frozen graph's
    restarted = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path / "snapshots")
    assert_same_ranking(restarted.search(name, probe, 300).matches, exact_ranking(store, name, probe))


# --- Whitening and query expansion ----------------------------------------------------------------

from shared.store import StoredWhitening, utc_now  # noqa: E402
from worker.descriptors import Whitening, l2_normalise  # noqa: E402


def learn_and_save(store: Store, name: str) -> Whitening:
    """What the worker's whitening task does, from every vector: learn, then store with a "whiten" event."""
    vectors = np.stack(list(stored(store, name).values()))
    whitening = Whitening.learn(vectors)
    saved = store.save_whitening(name, StoredWhitening(whitening.mean, whitening.projection, len(vectors),
                                                       len(vectors), utc_now()), DESCRIPTOR.model)
    assert saved
    return whitening


def whitened_ranking(store: Store, name: str, whitening: Whitening, query: np.ndarray) -> list[tuple[str, float]]:
    return exact_ranking(store, name, query, whitening.apply)


def whitening_on(store: Store, name: str, on: bool = True) -> None:
    store.put_collection_settings(name, {"match_threshold": 0.9, "pdq_max_distance": 31, "kind": "block",
                                         "whitening": on})


def test_a_whitened_collection_is_searched_and_scored_in_the_whitened_space(store, name):
    fill(store, name, clustered(60, seed=20))
    replicas = Replicas(store, DIMENSION)
    query = clustered(1, seed=21)[0]
    found = replicas.search(name, query, 10)
    assert found.whitening is None
    assert_same_ranking(found.matches, exact_ranking(store, name, query)[:10])

    assert not store.save_whitening(name, StoredWhitening(np.zeros(8), np.eye(8), 60, 60, utc_now()),
                                    DESCRIPTOR.model)  # refused: the collection does not want whitening
    whitening_on(store, name)
    assert not store.save_whitening(name, StoredWhitening(np.zeros(8), np.eye(8), 60, 60, utc_now()),
                                    "another-model")  # refused: learned from another descriptor's vectors
    whitening = learn_and_save(store, name)
    assert replicas.search(name, query, 10).matches == found.matches  # the old replica answers meanwhile
    replicas.wait_for_builds()  # the replica in the new whitening is loaded in the background
    found = replicas.search(name, query, 10)
    assert found.whitening["learned_from"] == 60 and found.whitening["dimensions"] == whitening.dimension
    assert_same_ranking(found.matches, whitened_ranking(store, name, whitening, query)[:10])
    assert found.matches != exact_ranking(store, name, query)[:10]  # whitening changed the scores
    ids = [image_id for image_id, _ in found.matches[:3]] + ["gone"]
    np.testing.assert_allclose(replicas.scores(name, query, ids)[:3], [s for _, s in found.matches[:3]], atol=1e-6)
    assert replicas.scores(name, query, ids)[3] is None

    store.save_image(name, "late", query, {}, DESCRIPTOR)  # a put after learning is whitened on arrival
    [(best, score)] = replicas.search(name, query, 1).matches
    assert best == "late" and score == pytest.approx(1.0, abs=1e-5)

    whitening_on(store, name, False)  # off: the learned whitening is forgotten, searches are plain again
    assert store.get_whitening(name) is None and store.collection_info(name)["whitening"] is None
    store.save_image(name, "later", -query, {}, DESCRIPTOR)  # applied to the old replica meanwhile
    assert replicas.search(name, query, 100).matches[-1][0] == "later"
    replicas.wait_for_builds()
    found = replicas.search(name, query, 10)
    assert found.whitening is None
    assert_same_ranking(found.matches, exact_ranking(store, name, query)[:10])


def test_an_hnsw_replica_is_whitened_and_a_snapshot_of_another_whitening_is_not_loaded(store, name, tmp_path, caplog):
    fill(store, name, clustered(150, seed=22))
    whitening_on(store, name)
    first_whitening = learn_and_save(store, name)
    first = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path)
    probe = clustered(1, seed=23)[0]
    first.search(name, probe, 5)
    first.wait_for_builds()
    assert isinstance(first._replicas[name].index, HnswIndex)
    expected = whitened_ranking(store, name, first_whitening, probe)
    assert first.search(name, probe, 1).matches[0] == (expected[0][0], pytest.approx(expected[0][1], abs=1e-5))

    fill(store, name, clustered(150, seed=24), prefix="more")  # grown: learned again
    second_whitening = learn_and_save(store, name)
    with caplog.at_level(logging.INFO, logger="worker.replica"):
        restarted = Replicas(store, DIMENSION, exact_max=50, snapshot_dir=tmp_path)
        found = restarted.search(name, probe, 300)
    assert "snapshot at change" not in caplog.text  # its vectors went through the first whitening
    assert found.whitening["collection_size"] == 300
    assert_same_ranking(found.matches, whitened_ranking(store, name, second_whitening, probe))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worker.replica"):
        assert first.search(name, probe, 1).whitening["collection_size"] == 150  # answers, in the old whitening
        first.wait_for_builds()  # the reload in the new one, then (past exact_max) its graph
    assert "new whitening" in caplog.text and "replica in its new whitening in place (300 vectors)" in caplog.text
    found = first.search(name, probe, 300)
    assert isinstance(first._replicas[name].index, HnswIndex) and found.whitening["collection_size"] == 300
    best, score = whitened_ranking(store, name, second_whitening, probe)[0]
    assert found.matches[0] == (best, pytest.approx(score, abs=1e-5))
    # Scores of given ids and query expansion read the vectors the graph holds.
    assert first.scores(name, probe, [best, "gone"]) == [pytest.approx(found.matches[0][1], abs=1e-6), None]
    expanded = first.search(name, probe, 5, expand=1)
    assert expanded.matches[0][0] == best and expanded.matches[0][1] > found.matches[0][1]


def test_query_expansion_averages_the_query_with_its_best_matches(store, name):
    vectors = clustered(40, seed=25)
    fill(store, name, vectors)
    replicas = Replicas(store, DIMENSION)
    query = clustered(1, seed=26)[0]
    plain = replicas.search(name, query, 40).matches
    top_two = [vectors[int(image_id.split("/")[1])] for image_id, _ in plain[:2]]
    expanded_query = l2_normalise(query + np.sum(top_two, axis=0))
    expanded = replicas.search(name, query, 40, expand=2)
    assert_same_ranking(expanded.matches, exact_ranking(store, name, expanded_query))
    ids = [image_id for image_id, _ in expanded.matches[:5]]
    np.testing.assert_allclose(replicas.scores(name, query, ids, expand=2), [s for _, s in expanded.matches[:5]],
                               atol=1e-6)


def test_a_whitening_change_during_the_reload_for_the_last_one_is_not_lost(store, name):
    import threading

    fill(store, name, clustered(60, seed=27))
    whitening_on(store, name)
    replicas = Replicas(store, DIMENSION)
    query = clustered(1, seed=28)[0]
    replicas.search(name, query, 5)
    learn_and_save(store, name)
    # The background reload loads the collection (reading the whitening just learned), then
    # takes the collection's lock to swap in: note when it has loaded.
    loaded = threading.Event()
    load_from_store = replicas._load_from_store

    def load_and_tell(collection: str):
        replica = load_from_store(collection)
        if threading.current_thread() is not threading.main_thread():
            loaded.set()
        return replica

    replicas._load_from_store = load_and_tell
    replicas.search(name, query, 5)  # sees the "whiten" event: the reload starts
    with replicas._lock(name):  # the reload can load, but not swap in, while this is held
        assert loaded.wait(30), "the reload never loaded the collection"
        assert replicas._replicas[name].whitening is None  # not swapped in: it waits for the lock
        whitening_on(store, name, False)  # a second change, which that reload has not seen
    replicas.wait_for_builds()
    found = replicas.search(name, query, 10)
    assert found.whitening is None  # reloaded once more: not stuck in the first change
    assert_same_ranking(found.matches, exact_ranking(store, name, query)[:10])

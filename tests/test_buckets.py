"""Collections of several buckets (issue 15, part 1): each bucket's images under a hash tag of its own with its
own change stream, the collection-level keys under the collection's; the store's reads and writes and the
replicas' merged searches answer as for one bucket."""

import time
import uuid

import numpy as np
import pytest

from shared import keys
from shared.collection_settings import DEFAULT_COLLECTION_SETTINGS
from shared.errors import LookalikeError
from shared.store import Descriptor, Store
from worker.pdq import PdqHash
from worker.replica import Replicas

DIMENSION = 8
DESCRIPTOR = Descriptor(model="test-model", dimension=DIMENSION, weights="test-weights")
BUCKETS = 8


@pytest.fixture
def name() -> str:
    return f"buckets-{uuid.uuid4().hex[:8]}"


def unit_rows(rng, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def sharded(store: Store, name: str, buckets: int = BUCKETS) -> None:
    store.put_collection_settings(name, DEFAULT_COLLECTION_SETTINGS | {"buckets": buckets})


def random_hash(rng) -> bytes:
    """A PDQ hash in its stored form, of full quality."""
    return PdqHash(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), 100).encode()


def distance(one: bytes, other: bytes) -> int:
    return sum(bin(a ^ b).count("1") for a, b in zip(one[:32], other[:32]))


def expected_ranking(vectors: dict[str, np.ndarray], query: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Every image by score, ties by id: the order merged answers promise."""
    ranked = sorted(((image_id, float(vector @ query)) for image_id, vector in vectors.items()),
                    key=lambda match: (-match[1], match[0]))
    return ranked[:k]


def test_images_spread_over_buckets_each_in_a_slot_of_its_own(store, name):
    sharded(store, name)
    rng = np.random.default_rng(1)
    ids = [f"img/{n}" for n in range(200)]
    vectors = unit_rows(rng, len(ids))
    store.save_images(name, [(image_id, vector, {"n": n}, None, b"thumb") for n, (image_id, vector)
                             in enumerate(zip(ids, vectors))], DESCRIPTOR)

    per_bucket = [store.redis.hkeys(keys.collection_vectors(f"{name}/{bucket}")) for bucket in range(BUCKETS)]
    assert all(per_bucket)  # every bucket holds some: 200 ids by CRC-32
    assert sorted(image_id.decode() for held in per_bucket for image_id in held) == sorted(ids)
    for bucket, held in enumerate(per_bucket):  # each image in the bucket of its id, for good
        assert {keys.bucket_of(image_id.decode(), BUCKETS) for image_id in held} == {bucket}
    assert not store.redis.exists(keys.collection_vectors(name))  # nothing in the one-bucket layout
    assert store.redis.xlen(keys.collection_changes(f"{name}/3")) == len(per_bucket[3])  # a stream per bucket

    info = store.collection_info(name)
    assert info["images"] == 200 and info["settings"]["buckets"] == BUCKETS and info["model"] == "test-model"
    assert store.collection_sizes()[name] == 200
    assert store.get_image(name, "img/17")["metadata"] == {"n": 17}
    assert store.get_thumbnail(name, "img/17") == b"thumb"
    assert store.get_metadata(name, ["img/5", "nope", "img/199"]) == [{"n": 5}, None, {"n": 199}]
    assert len(store.sample_vectors(name, 50, DIMENSION)) == 50

    walked, cursor = [], 0
    while True:  # a walk through every bucket, a small page at a time
        cursor, page = store.list_image_ids(name, cursor, 7)
        walked += page
        if cursor == 0:
            break
    assert sorted(set(walked)) == sorted(ids)

    assert store.delete_image(name, "img/17") and not store.delete_image(name, "img/17")
    assert store.get_image(name, "img/17") is None and store.collection_info(name)["images"] == 199


def test_the_bucket_count_is_fixed_by_the_first_write(store, name):
    sharded(store, name, 4)
    sharded(store, name, 4)  # the same again: fine
    store.save_image(name, "a", unit_rows(np.random.default_rng(2), 1)[0], {}, DESCRIPTOR)
    with pytest.raises(LookalikeError) as refused:
        sharded(store, name, 8)
    assert refused.value.code == "buckets_fixed" and refused.value.details == {"buckets": 4, "requested": 8}
    assert store.put_collection_settings(name, DEFAULT_COLLECTION_SETTINGS | {"match_threshold": 0.5}) == 4
    assert store.collection_info(name)["settings"]["buckets"] == 4  # left out of a PUT: kept

    plain = f"{name}-plain"  # a collection written before buckets existed has one, and keeps it
    store.save_image(plain, "a", unit_rows(np.random.default_rng(3), 1)[0], {}, DESCRIPTOR)
    store.redis.delete(keys.collection_buckets(plain))  # as the layout before this key
    with pytest.raises(LookalikeError) as refused:
        sharded(store, plain, 8)
    assert refused.value.details["buckets"] == 1
    assert store.get_image(plain, "a") is not None


def test_a_drop_empties_every_bucket_and_frees_the_count(store, name):
    sharded(store, name)
    rng = np.random.default_rng(4)
    store.save_images(name, [(f"img/{n}", vector, {}, None, None) for n, vector in enumerate(unit_rows(rng, 40))],
                      DESCRIPTOR)
    assert store.drop_collection(name) == 40
    assert store.redis.keys(keys.collection_keys_pattern(name).replace("*", "*vectors")) == []
    assert store.collection_info(name) is None and name not in store.list_collections()
    sharded(store, name, 2)  # dropped: a new count may be chosen
    assert store.buckets(name) == 2


def test_merged_searches_answer_as_one_exact_search(store, name):
    sharded(store, name)
    rng = np.random.default_rng(5)
    ids = [f"img/{n}" for n in range(300)]
    rows = unit_rows(rng, len(ids))
    rows[10:20] = rows[9]  # ties: ten copies of one vector
    vectors = dict(zip(ids, rows))
    hashes = {image_id: random_hash(rng) for image_id in ids}
    store.save_images(name, [(image_id, vectors[image_id], {}, hashes[image_id], None) for image_id in ids], DESCRIPTOR)
    replicas = Replicas(store, DIMENSION)

    for query in [rows[9], *unit_rows(rng, 5)]:
        found = replicas.search(name, query, 25)
        assert found.searched == 300
        expected = expected_ranking(vectors, query, 25)
        assert [image_id for image_id, _ in found.matches] == [image_id for image_id, _ in expected]
        np.testing.assert_allclose([score for _, score in found.matches], [score for _, score in expected], atol=1e-6)
        some = ["img/3", "img/250", "missing"]
        assert replicas.scores(name, query, some)[:2] == pytest.approx([float(vectors[i] @ query) for i in some[:2]],
                                                                        abs=1e-6)
        assert replicas.scores(name, query, some)[2] is None

    probe = hashes["img/42"][:32]
    within = replicas.search_hashes(name, probe, 120)
    expected = sorted(((image_id, distance(stored, probe)) for image_id, stored in hashes.items()
                       if distance(stored, probe) <= 120), key=lambda match: (match[1], match[0]))
    assert len(expected) > 10 and within == expected and within[0] == ("img/42", 0)
    assert replicas.hash_distances(name, ["img/42", "img/7", "missing"], probe) == [
        0, distance(hashes["img/7"], probe), None]

    # Changes reach the bucket holding the image; the others are not touched.
    store.delete_image(name, "img/9")
    store.save_image(name, "img/new", rows[9], {}, DESCRIPTOR)
    vectors.pop("img/9")
    vectors["img/new"] = rows[9]
    found = replicas.search(name, rows[9], 12)
    assert [image_id for image_id, _ in found.matches] == [image_id for image_id, _ in
                                                           expected_ranking(vectors, rows[9], 12)]


def test_query_expansion_over_buckets_uses_the_best_matches_of_all(store, name):
    rng = np.random.default_rng(6)
    rows = unit_rows(rng, 120)
    one, many = f"{name}-one", name
    sharded(store, many)
    for collection in (one, many):
        store.save_images(collection, [(f"img/{n}", row, {}, None, None) for n, row in enumerate(rows)], DESCRIPTOR)
    replicas = Replicas(store, DIMENSION)
    query = unit_rows(rng, 1)[0]
    plain, merged = replicas.search(one, query, 10, expand=3), replicas.search(many, query, 10, expand=3)
    assert [image_id for image_id, _ in merged.matches] == [image_id for image_id, _ in plain.matches]
    np.testing.assert_allclose([score for _, score in merged.matches], [score for _, score in plain.matches],
                               atol=1e-6)


def test_buckets_are_bounded_stale_and_a_write_token_is_seen_at_once(store, name):
    sharded(store, name)
    plain = f"{name}-one"
    rng = np.random.default_rng(7)
    rows = unit_rows(rng, 60)
    for collection in (name, plain):
        store.save_images(collection, [(f"img/{n}", row, {}, None, None) for n, row in enumerate(rows[:50])],
                          DESCRIPTOR)
    replicas = Replicas(store, DIMENSION, staleness_seconds=3600)  # (no tailing thread: stale until asked)
    for collection in (name, plain):
        assert replicas.search(collection, rows[55], 1).searched == 50

    written: dict[int, int] = {}
    for collection in (name, plain):
        store.save_image(collection, "new", rows[55], {}, DESCRIPTOR, written=written if collection == name else None)
    bucket = keys.bucket_of("new", BUCKETS)
    assert list(written) == [bucket] and written[bucket] == store.change_position(f"{name}/{bucket}")[0]
    assert replicas.search(plain, rows[55], 1).matches[0][0] == "new"  # one bucket: every write before the query
    assert replicas.search(name, rows[55], 1).matches[0][0] != "new"  # several: as of a state up to an hour old
    token = {f"{name}/{bucket}": written[bucket]}
    assert replicas.search(name, rows[55], 1, fresh=token).matches[0][0] == "new"  # the token's write, at once

    replicas.staleness_seconds = 0.2  # past the bound, a query brings a bucket up to date itself
    store.delete_image(name, "new")
    deadline = time.monotonic() + 30
    while replicas.search(name, rows[55], 1).matches[0][0] == "new":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_drop_between_a_saves_claim_and_its_writes_leaves_no_image_uncounted(store, name, monkeypatch):
    sharded(store, name)
    rng = np.random.default_rng(8)
    rows = unit_rows(rng, 20)
    real_run = store._run_scripts

    def drop_first(calls):  # the drop lands after the save read the count, before its writes
        if calls and calls[0][0] is store._save_script:
            monkeypatch.setattr(store, "_run_scripts", real_run)
            store.drop_collection(name)
        return real_run(calls)

    monkeypatch.setattr(store, "_run_scripts", drop_first)
    store.save_images(name, [(f"img/{n}", row, {}, None, None) for n, row in enumerate(rows)], DESCRIPTOR)
    assert store.buckets(name) == BUCKETS and store.collection_info(name)["images"] == 20  # counted again
    assert all(store.get_image(name, f"img/{n}") is not None for n in range(20))

    other = f"{name}-remade"
    sharded(store, other)

    def remake_first(calls):  # dropped and made again with another count meanwhile
        if calls and calls[0][0] is store._save_script:
            monkeypatch.setattr(store, "_run_scripts", real_run)
            store.drop_collection(other)
            sharded(store, other, 2)
        return real_run(calls)

    monkeypatch.setattr(store, "_run_scripts", remake_first)
    with pytest.raises(LookalikeError) as changed:
        store.save_images(other, [(f"img/{n}", row, {}, None, None) for n, row in enumerate(rows)], DESCRIPTOR)
    assert changed.value.code == "collection_changed" and changed.value.details["buckets"] == 2
    assert not any(store.redis.hlen(keys.collection_vectors(f"{other}/{bucket}")) for bucket in range(BUCKETS))


def test_thousands_of_identical_images_are_settled_in_the_index_and_rank_by_id(store, name):
    sharded(store, name, 2)
    rng = np.random.default_rng(9)
    copy = unit_rows(rng, 1)[0]
    others = unit_rows(rng, 100)
    store.save_images(name, [(f"copy/{n:05d}", copy, {}, None, None) for n in range(5000)]
                      + [(f"other/{n}", row, {}, None, None) for n, row in enumerate(others)], DESCRIPTOR)
    replicas = Replicas(store, DIMENSION)
    found = replicas.search(name, copy, 10)
    assert [image_id for image_id, _ in found.matches] == [f"copy/{n:05d}" for n in range(10)]  # ties by id
    for part in store.parts(name):  # each bucket hands on at most k candidates, not its 2,500 near-ties
        ids, _ = replicas._replicas[part].index.search(copy, 10)
        assert len(ids) == 10 and ids == sorted(ids)


def test_a_search_process_lets_go_of_what_is_no_longer_its_groups(store, name):
    from shared.search_groups import bucket_groups
    from worker.placement import PlacementKeeper

    groups = ("g1", "g2")
    sharded(store, name)
    plain = f"{name}-one"
    rng = np.random.default_rng(10)
    for collection in (name, plain):
        store.save_images(collection, [(f"img/{n}", row, {}, None, None) for n, row in enumerate(unit_rows(rng, 40))],
                          DESCRIPTOR)
    replicas = Replicas(store, DIMENSION)
    replicas.search(name, unit_rows(rng, 1)[0], 1)  # every bucket held here, and the other collection
    replicas.search(plain, unit_rows(rng, 1)[0], 1)
    placement = bucket_groups(name, {"group": None}, BUCKETS, groups)
    mine = "g1"
    keeper = PlacementKeeper(store, replicas, "p1", (mine,), groups, grace_seconds=0)
    keeper.tend(liveness_seconds=3)
    plain_group = bucket_groups(plain, {"group": None}, 1, groups)
    expected = {f"{name}/{bucket}" for bucket in placement[mine]} | ({plain} if mine in plain_group else set())
    assert set(replicas.held_parts()) == expected

    store.drop_collection(name)  # made again as one bucket: the old buckets are no one's
    store.save_image(name, "x", unit_rows(rng, 1)[0], {}, DESCRIPTOR)
    keeper.tend(liveness_seconds=3)
    assert not any(part.startswith(f"{name}/") for part in replicas.held_parts())


@pytest.mark.parametrize("buckets", [1, BUCKETS])
def test_hashes_banked_alone_are_searched_by_pdq_and_never_by_the_cnn(store, name, buckets):
    """Entries with a hash and no vector (POST …/hashes): counted and listed as images, loaded and followed by
    the replicas' PDQ indexes only; an image replaced by a hash leaves the CNN index, and the other way round."""
    sharded(store, name, buckets)
    rng = np.random.default_rng(8)
    rows = unit_rows(rng, 20)
    hashes = {f"h/{n}": random_hash(rng) for n in range(30)}
    store.save_images(name, [(image_id, None, {"banked": True}, stored, None) for image_id, stored in hashes.items()],
                      None)
    info = store.collection_info(name)
    assert info["images"] == 30 and info["dimension"] is None and info["model"] is None  # no descriptor yet
    store.save_images(name, [(f"img/{n}", row, {}, None, None) for n, row in enumerate(rows)], DESCRIPTOR)
    assert store.collection_info(name)["model"] == DESCRIPTOR.model

    loaded = Replicas(store, DIMENSION)  # loads what is stored now
    assert loaded.search(name, rows[0], 100).searched == 20
    probe = hashes["h/3"][:32]
    assert loaded.search_hashes(name, probe, 0) == [("h/3", 0)]
    assert loaded.scores(name, rows[0], ["h/3", "img/0"]) == [None, pytest.approx(1.0, abs=1e-6)]

    # Followed live: an image replaced by a hash, a hash by an image, a hash deleted.
    replacement = random_hash(rng)
    store.save_images(name, [("img/0", None, {}, replacement, None)], None)
    store.save_image(name, "h/4", rows[5], {}, DESCRIPTOR)
    store.delete_image(name, "h/3")
    for replicas in (loaded, Replicas(store, DIMENSION)):  # (the second loads the state as it is now)
        found = replicas.search(name, rows[0], 100)
        assert "img/0" not in dict(found.matches) and found.searched == 20  # 19 images and h/4
        assert replicas.search_hashes(name, replacement[:32], 0) == [("img/0", 0)]
        assert replicas.search_hashes(name, probe, 0) == []
        assert replicas.search_hashes(name, hashes["h/4"][:32], 0) == []  # h/4 is an image now, without a hash
        assert sorted(dict(replicas.search(name, rows[5], 2).matches)) == ["h/4", "img/5"]
    assert store.sample_vectors(name, 100, DIMENSION).shape == (20, DIMENSION)

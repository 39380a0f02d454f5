"""Moderation by hash, through the real API and worker: PDQ hashes banked without their images (as moderation
teams share them), checked and queried by image or by hash, the query's own hash returned; a synchronous
answer with ``Prefer: wait``; no verdict from a collection nobody configured."""

import numpy as np
import pytest

from tests.conftest import natural_images, store_snapshot
from tests.test_pdq import decoded, reencoded
from worker.pdq import compute_pdq

pytestmark = pytest.mark.usefixtures("api")


def bank(api, collection: str, items: list[dict]):
    return api.http.post(api.url(f"/v1/collections/{collection}/hashes"), json={"items": items}, timeout=30)


def submit(api, collection: str, what: str, *, image: bytes | None = None, headers: dict | None = None, **form):
    files = {"image": ("probe.jpg", image, "image/jpeg")} if image is not None else None
    return api.http.post(api.url(f"/v1/collections/{collection}/{what}"), files=files,
                         data={name: str(value) for name, value in form.items()}, headers=headers or {}, timeout=60)


def finished(api, collection: str, what: str, **options) -> dict:
    task = api.wait(submit(api, collection, what, **options))
    assert task["state"] == "succeeded", task
    return task["result"]


@pytest.fixture
def banned(api, collection):
    """A collection holding two banked hashes (no images) and one indexed image."""
    images = natural_images()
    hashes = {name: compute_pdq(decoded(images[name])) for name in ("camera", "astronaut")}
    answer = bank(api, collection, [{"id": f"list/{name}", "hash": pdq.hex.upper() if name == "camera" else pdq.hex,
                                     "quality": pdq.quality, "metadata": {"list": "shared"}}
                                    for name, pdq in hashes.items()])
    assert answer.status_code == 201, answer.text
    assert answer.json()["stored"] == 2 and answer.json()["replaced"] == 0 and answer.json()["write_token"]
    assert api.wait(api.index(collection, images["rocket"], "img/rocket"))["state"] == "succeeded"
    return collection, images, hashes


def test_banked_hashes_are_entries_of_their_own(api, banned):
    collection, _, hashes = banned
    entry = api.http.get(api.url(f"/v1/collections/{collection}/images/list/camera")).json()
    assert entry["pdq"] == {"hash": hashes["camera"].hex, "quality": hashes["camera"].quality}
    assert entry["metadata"] == {"list": "shared"}
    info = api.http.get(api.url(f"/v1/collections/{collection}")).json()
    assert info["images"] == 3 and info["configured"] is False
    ids = api.http.get(api.url(f"/v1/collections/{collection}/images")).json()["ids"]
    assert sorted(ids) == ["img/rocket", "list/astronaut", "list/camera"]


def test_a_check_by_image_finds_a_banked_hash_and_gives_a_verdict_only_once_configured(api, banned):
    collection, images, hashes = banned
    result = finished(api, collection, "checks", image=reencoded(images["camera"]))
    best = result["best_match"]
    assert best["id"] == "list/camera" and best["matched_by"] == ["pdq"] and best["score"] is None
    assert best["pdq_distance"] <= 31 and result["near_duplicate"] is True
    assert result["verdict"] is None  # nobody said what this collection is for
    assert result["pdq_hash"] == compute_pdq(decoded(reencoded(images["camera"]))).hex

    assert api.http.put(api.url(f"/v1/collections/{collection}"), json={"kind": "block"}).status_code == 200
    assert finished(api, collection, "checks", image=reencoded(images["camera"]))["verdict"] == "block"
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["configured"] is True
    # A query of a configured collection carries the verdict too; by the CNN alone, banked hashes are not found.
    by_cnn = finished(api, collection, "queries", image=images["camera"], signals="cnn", k=5)
    assert [match["id"] for match in by_cnn["matches"]] == ["img/rocket"] and by_cnn["verdict"] is not None


def test_checks_and_queries_by_hash(api, banned):
    collection, images, hashes = banned
    wanted = hashes["astronaut"]
    checked = finished(api, collection, "checks", hash=wanted.hex)
    assert checked["best_match"]["id"] == "list/astronaut" and checked["best_match"]["pdq_distance"] == 0
    assert checked["signals"] == ["pdq"] and checked["pdq_hash"] == wanted.hex and checked["pdq_quality"] == 100

    # The indexed image's hash is found by hash too, and a query ranks by distance.
    rocket = compute_pdq(decoded(images["rocket"]))
    queried = finished(api, collection, "queries", hash=rocket.hex, hash_quality=rocket.quality, k=5)
    assert queried["matches"][0]["id"] == "img/rocket" and queried["matches"][0]["pdq_distance"] == 0
    assert queried["pdq_quality"] == rocket.quality and queried["verdict"] is None
    # A hash of too low a quality is never matched (LOOKALIKE_PDQ_MIN_QUALITY), as an image's is not.
    weak = finished(api, collection, "checks", hash=wanted.hex, hash_quality=10)
    assert weak["signals"] == [] and weak["best_match"] is None


@pytest.mark.parametrize("form, status, code", [
    ({"hash": "f" * 63}, 400, "invalid_hash"),
    ({"hash": "g" * 64}, 400, "invalid_hash"),
    ({"hash": "f" * 64, "hash_quality": "101"}, 400, "invalid_hash_quality"),
    ({"hash": "f" * 64, "signals": "cnn"}, 422, "signal_unavailable"),
    ({"hash": "f" * 64, "signals": "both"}, 422, "signal_unavailable"),
    ({"hash": "f" * 64, "vector": "[1]"}, 400, "ambiguous_query_input"),
])
def test_bad_hash_queries_are_refused_and_change_nothing(api, collection, redis_client, form, status, code):
    before = store_snapshot(redis_client)
    for what in ("queries", "checks"):
        answer = submit(api, collection, what, **form)
        assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text
    assert store_snapshot(redis_client) == before


@pytest.mark.parametrize("item, code", [
    ({"id": "a", "hash": "xyz"}, "invalid_hash"),
    ({"id": "a", "hash": "0" * 64, "quality": 101}, "invalid_hash_quality"),
    ({"id": "a", "hash": "0" * 64, "quality": True}, "invalid_hash_quality"),
    ({"id": "../a", "hash": "0" * 64}, "invalid_image_id"),
    ({"id": "a", "hash": "0" * 64, "metadata": [1]}, "invalid_metadata"),
])
def test_bad_banked_hashes_refuse_the_whole_request(api, collection, redis_client, item, code):
    before = store_snapshot(redis_client)
    answer = bank(api, collection, [{"id": "fine", "hash": "1" * 64}, item])
    assert answer.status_code == 400 and answer.json()["error"]["code"] == code, answer.text
    assert answer.json()["error"]["details"]["item"] == 1
    assert store_snapshot(redis_client) == before


def test_a_hash_replaces_an_image_and_deletes_like_one(api, banned):
    """An id banked as a hash loses its image's vector (the CNN no longer finds it; PDQ still does); a delete
    takes a banked hash out of every later search."""
    collection, images, _ = banned
    rocket = compute_pdq(decoded(images["rocket"]))
    replaced = bank(api, collection, [{"id": "img/rocket", "hash": rocket.hex, "metadata": {"now": "hash"}}])
    assert replaced.json()["replaced"] == 1
    token = replaced.json()["write_token"]
    by_cnn = finished(api, collection, "queries", image=images["rocket"], signals="cnn", write_token=token)
    assert by_cnn["matches"] == []
    by_both = finished(api, collection, "queries", image=images["rocket"], k=3, write_token=token)
    assert by_both["matches"][0]["id"] == "img/rocket" and by_both["matches"][0]["metadata"] == {"now": "hash"}

    deleted = api.http.delete(api.url(f"/v1/collections/{collection}/images/list/camera")).json()
    assert deleted["deleted"] is True
    after = finished(api, collection, "checks", image=images["camera"], write_token=deleted["write_token"])
    assert after["best_match"] is None or after["best_match"]["id"] != "list/camera"


def test_prefer_wait_answers_a_check_with_its_result(api, banned):
    collection, images, _ = banned
    answer = submit(api, collection, "checks", image=images["camera"], headers={"Prefer": "wait=30"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Preference-Applied"] == "wait=30"
    task = answer.json()
    assert task["kind"] == "check" and task["state"] == "succeeded"
    assert task["result"]["best_match"]["id"] == "list/camera"
    assert answer.headers["Content-Location"] == f"/v1/tasks/{task['task_id']}"
    # Without the preference (or with one the server cannot honour) the usual 202.
    for headers in ({}, {"Prefer": "wait=soon"}):
        queued = submit(api, collection, "checks", image=images["camera"], headers=headers)
        assert queued.status_code == 202, queued.text
        assert api.wait(queued)["state"] == "succeeded"  # (finished before the next test looks at the store)


def test_a_thousand_hashes_with_metadata_fit_one_request(api, collection):
    """The documented most (LOOKALIKE_MAX_VECTORS_PER_REQUEST) with a kilobyte of metadata each: over the API's
    default 1 MiB body, within the per-item budget vectors have too."""
    rng = np.random.default_rng(41)
    items = [{"id": f"list/{n}", "hash": rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex(),
              "metadata": {"note": "x" * 1000}} for n in range(1000)]
    answer = bank(api, collection, items)
    assert answer.status_code == 201, answer.text[:300]
    assert answer.json()["stored"] == 1000


def test_prefer_wait_answers_202_when_redis_fails_during_the_wait(redis_server, monkeypatch):
    """The task is queued before the wait: a Redis failure while waiting must not become a 503 that invites
    submitting the check again (a second check, a second webhook)."""
    import redis as redis_py

    from api.app import create_app
    from shared.settings import Settings

    app = create_app(Settings(redis_url=redis_server.url.rsplit("/", 1)[0] + "/5", auth=False, rate_limit=""))
    store = app.extensions["lookalike"]["store"]

    def gone(task_id, timeout):
        raise redis_py.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(store, "wait_for_task", gone)
    answer = app.test_client().post("/v1/collections/blip/checks", data={"hash": "ab" * 32},
                                    headers={"Prefer": "wait=5"})
    assert answer.status_code == 202, answer.json
    assert store.get_task(answer.json["task_id"])["state"] == "queued"
    store.redis.flushdb()

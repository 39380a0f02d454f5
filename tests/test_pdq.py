"""PDQ hashes beside the CNN: stored at index time, matched by Hamming distance, chosen per request."""

import json
import os
import select
import signal
import time

import cv2
import numpy as np
import psutil
import pytest

from shared import keys
from tests.conftest import natural_images, store_snapshot
from tests.test_vectors_and_filters import unit_vectors
import worker.pdq
from worker.pdq import HashIndex, PdqHash, compute_pdq


def hamming(a: bytes, b: bytes) -> int:
    return int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def reencoded(data: bytes) -> bytes:
    """Half the size and JPEG quality 50: what an upload pipeline's re-encode does."""
    return jpeg(cv2.resize(decoded(data), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), 50)


def cropped(data: bytes, keep: float = 0.7) -> bytes:
    pixels = decoded(data)
    height, width = pixels.shape[:2]
    top, left = int(height * (1 - keep) / 2), int(width * (1 - keep) / 2)
    return jpeg(pixels[top:top + int(height * keep), left:left + int(width * keep)])


FLAT_GREY = jpeg(np.full((120, 160, 3), 128, np.uint8))


# --- Pure functions --------------------------------------------------------------------------


def test_hash_survives_reencoding_and_tells_images_apart():
    images = natural_images()
    original = compute_pdq(decoded(images["astronaut"]))
    assert original.quality >= 50
    assert hamming(original.bits, compute_pdq(decoded(reencoded(images["astronaut"]))).bits) <= 31
    assert hamming(original.bits, compute_pdq(decoded(cropped(images["astronaut"]))).bits) > 31
    others = [compute_pdq(decoded(images[name])).bits for name in ("camera", "coffee", "horse", "rocket")]
    assert min(hamming(original.bits, other) for other in others) > 64
    assert compute_pdq(decoded(FLAT_GREY)).quality < 50
    assert PdqHash.decode(original.encode()) == original


def test_large_images_are_hashed_from_a_downscaled_copy():
    pixels = cv2.resize(decoded(natural_images()["coffee"]), (2400, 1600), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(pixels, (512, 341), interpolation=cv2.INTER_AREA)
    assert hamming(compute_pdq(pixels).bits, compute_pdq(small).bits) <= 8


def test_hash_index_finds_within_distance_and_ignores_low_quality():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 32, dtype=np.uint8)
    near = base.copy()
    near[:2] ^= 0xFF  # 16 bits differ
    far = base ^ 0xFF  # all 256 differ
    index = HashIndex(min_quality=50)
    index.put("near", PdqHash(near.tobytes(), 90))
    index.put("far", PdqHash(far.tobytes(), 90))
    index.put("blurry", PdqHash(base.tobytes(), 10))  # identical bits, quality too low: never matched
    index.put("same", PdqHash(base.tobytes(), 100))
    assert index.within(base.tobytes(), 31) == [("same", 0), ("near", 16)]
    assert index.distance_to("far", base.tobytes()) == 256 and index.distance_to("blurry", base.tobytes()) is None
    index.delete("same")
    index.put("near", PdqHash(near.tobytes(), 20))  # replaced by a low-quality hash: gone
    assert index.within(base.tobytes(), 256) == [("far", 256)] and len(index) == 1


def flipped(words: np.ndarray, bits: int, rng) -> np.ndarray:
    """A copy of a 256-bit hash (32 bytes) with ``bits`` random bits flipped."""
    unpacked = np.unpackbits(words)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked)


def scan(hashes: dict[str, np.ndarray], query: np.ndarray, max_distance: int) -> list[tuple[str, int]]:
    """What the index must answer: every hash within the distance, by a plain scan."""
    distances = {image_id: int(np.unpackbits(stored ^ query).sum()) for image_id, stored in hashes.items()}
    return sorted(((image_id, d) for image_id, d in distances.items() if d <= max_distance), key=lambda m: (m[1], m[0]))


def test_the_hash_index_answers_as_a_scan_through_puts_replacements_and_deletes(monkeypatch):
    monkeypatch.setattr(worker.pdq, "INDEX_MIN_HASHES", 200)  # index a small collection, so the test stays quick
    rng = np.random.default_rng(1)
    centres = [rng.integers(0, 256, 32, dtype=np.uint8) for _ in range(20)]
    hashes: dict[str, np.ndarray] = {}
    index = HashIndex(min_quality=50)

    def put(image_id: str, words: np.ndarray) -> None:
        hashes[image_id] = words
        index.put(image_id, PdqHash(words.tobytes(), 100))

    for number in range(1500):  # clusters of near hashes: many within 31 bits of each other
        put(f"h/{number}", flipped(centres[number % 20], int(rng.integers(0, 48)), rng))
    index.build()
    for _ in range(6):  # changes after the build: fresh slots, reused slots, rebuilds
        for number in rng.choice(1500, 400, replace=False):  # 2,400 writes in all: the tables get rebuilt
            image_id = f"h/{number}"
            if rng.random() < 0.3:
                hashes.pop(image_id, None)
                index.delete(image_id)
            else:
                put(image_id, flipped(centres[int(rng.integers(20))], int(rng.integers(0, 48)), rng))
        for _ in range(10):
            query = flipped(centres[int(rng.integers(20))], int(rng.integers(0, 24)), rng)
            for max_distance in (0, 15, 31, 47):  # 47: more than one bit a chunk, answered by a scan
                assert index.within(query.tobytes(), max_distance) == scan(hashes, query, max_distance)
    assert len(index) == len(hashes)


# --- Through the service -----------------------------------------------------------------------


def check(api, collection, image: bytes, **form) -> dict:
    files = {"image": ("probe.jpg", image, "image/jpeg")}
    task = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/checks"), files=files,
                                  data={k: v if isinstance(v, str) else json.dumps(v) for k, v in form.items()}))
    assert task["state"] == "succeeded", task
    return task["result"]


def query(api, collection, image: bytes, **form) -> dict:
    files = {"image": ("probe.jpg", image, "image/jpeg")}
    task = api.wait(api.http.post(api.url(f"/v1/collections/{collection}/queries"), files=files,
                                  data={k: str(v) for k, v in form.items()}))
    assert task["state"] == "succeeded", task
    return task["result"]


@pytest.fixture
def photos(api, collection):
    """Five photographs in a collection configured as a block list (so that checks give verdicts)."""
    images = natural_images()
    for name in ("astronaut", "camera", "coffee", "horse", "rocket"):
        api.wait(api.index(collection, images[name], f"photo/{name}"))
    assert api.http.put(api.url(f"/v1/collections/{collection}"), json={"kind": "block"}).status_code == 200
    return collection, images


def test_index_stores_the_hash_and_its_quality(api, photos):
    collection, images = photos
    stored = api.http.get(api.url(f"/v1/collections/{collection}/images/photo/astronaut")).json()["pdq"]
    expected = compute_pdq(decoded(images["astronaut"]))
    assert stored == {"hash": expected.hex, "quality": expected.quality}


def test_pdq_matches_a_reencoded_copy(api, photos):
    collection, images = photos
    # A strict CNN threshold: only the hash can call this copy a near-duplicate.
    api.http.put(api.url(f"/v1/collections/{collection}"), json={"match_threshold": 1.0})
    result = check(api, collection, reencoded(images["astronaut"]), signals="pdq")
    assert result["verdict"] == "block" and result["signals"] == ["pdq"]
    best = result["best_match"]
    assert best["id"] == "photo/astronaut" and best["matched_by"] == ["pdq"] and best["pdq_distance"] <= 31
    assert best["score"] is None  # the CNN was not asked (nor run)

    cnn_only = check(api, collection, reencoded(images["astronaut"]), signals="cnn")
    assert cnn_only["verdict"] == "none" and cnn_only["best_match"]["pdq_distance"] is None

    both = check(api, collection, reencoded(images["astronaut"]))  # checks use both signals by default
    assert both["signals"] == ["cnn", "pdq"] and both["verdict"] == "block"
    assert both["best_match"]["matched_by"] == ["pdq"] and both["best_match"]["score"] > 0.9


def test_the_cnn_catches_a_crop_that_pdq_misses(api, photos):
    collection, images = photos
    crop = cropped(images["astronaut"])
    pdq_only = check(api, collection, crop, signals="pdq")
    assert pdq_only["verdict"] == "none" and pdq_only["best_match"] is None
    both = check(api, collection, crop)
    best = both["best_match"]
    assert best["id"] == "photo/astronaut" and best["pdq_distance"] > 31
    api.http.put(api.url(f"/v1/collections/{collection}"), json={"match_threshold": best["score"] - 0.01})
    assert check(api, collection, crop)["best_match"]["matched_by"] == ["cnn"]


def test_queries_rank_pdq_matches_first_and_say_which_signal_matched(api, photos):
    collection, images = photos
    api.http.put(api.url(f"/v1/collections/{collection}"), json={"match_threshold": 1.0})
    result = query(api, collection, reencoded(images["camera"]), k=3, signals="both")
    first, *rest = result["matches"]
    assert first["id"] == "photo/camera" and first["matched_by"] == ["pdq"] and result["verdict"] == "block"
    assert len(rest) == 2 and all(match["matched_by"] == [] and match["pdq_distance"] > 31 for match in rest)
    assert query(api, collection, images["camera"], k=3)["signals"] == ["cnn", "pdq"]  # queries default to both
    assert query(api, collection, images["camera"], k=3, signals="cnn")["signals"] == ["cnn"]  # the CNN alone, asked


def test_low_quality_hashes_are_not_used(api, collection):
    indexed = api.wait(api.index(collection, FLAT_GREY, "grey"))
    assert indexed["result"]["pdq_quality"] < 50
    result = check(api, collection, FLAT_GREY, signals="pdq")
    assert result["signals"] == [] and result["pdq_quality"] < 50 and result["best_match"] is None
    both = check(api, collection, FLAT_GREY)
    assert both["signals"] == ["cnn"] and both["best_match"]["id"] == "grey"


def test_deleting_an_image_deletes_its_hash(api, photos, redis_client):
    collection, images = photos
    assert redis_client.hexists(keys.collection_pdq(collection), "photo/horse")
    api.http.delete(api.url(f"/v1/collections/{collection}/images/photo/horse"))
    assert not redis_client.hexists(keys.collection_pdq(collection), "photo/horse")
    assert check(api, collection, images["horse"], signals="pdq")["best_match"] is None


@pytest.mark.parametrize(("form", "status", "code"), [
    ({"signals": "sift"}, 400, "invalid_signals"),
    ({"signals": "pdq", "vector": "VECTOR"}, 422, "signal_unavailable"),
    ({"signals": "both", "vector": "VECTOR"}, 422, "signal_unavailable"),
])
def test_bad_signal_requests_are_refused(api, photos, redis_client, form, status, code):
    collection, _ = photos
    form = {name: json.dumps(unit_vectors(1, 5)[0].tolist()) if value == "VECTOR" else value
            for name, value in form.items()}
    before = store_snapshot(redis_client)
    files = None if "vector" in form else {"image": ("a.jpg", natural_images()["coffee"], "image/jpeg")}
    response = api.http.post(api.url(f"/v1/collections/{collection}/checks"), data=form, files=files)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert store_snapshot(redis_client) == before


def test_hashes_from_hashing_processes_are_the_threads_hashes():
    from worker.pdq import HashProcesses

    images = natural_images()
    pixels = [decoded(images[name]) for name in ("astronaut", "camera", "rocket")]
    in_thread, in_processes = HashProcesses(0), HashProcesses(1)
    try:
        in_processes.warm()
        pool = in_processes._pool
        [process] = pool._processes.values()
        pending = [in_processes.start(image) for image in pixels]  # all submitted before any is awaited
        assert [hashed() for hashed in pending] == [in_thread.start(image)() for image in pixels]
        # hashed there, not here after a fallback: the same pool and process throughout
        assert in_processes._pool is pool and list(pool._processes.values()) == [process] and process.is_alive()
    finally:
        in_processes.shutdown()


def test_a_killed_hashing_process_costs_no_hash():
    from worker.pdq import HashProcesses

    pixels = decoded(natural_images()["astronaut"])
    hashes = HashProcesses(1)
    try:
        expected = hashes.start(pixels)()
        broken = hashes._pool
        [process] = broken._processes.values()
        os.kill(process.pid, signal.SIGKILL)  # the kernel's OOM killer, an operator
        process.join(timeout=30)
        assert hashes.start(pixels)() == expected  # computed here meanwhile
        assert hashes.start(pixels)() == expected  # and by new processes after
        assert hashes._pool is not broken and hashes.processes == 1
    finally:
        hashes.shutdown()


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting to be)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_wedged_hashing_process_costs_a_timeout_not_a_task(monkeypatch):
    import worker.pdq as pdq

    monkeypatch.setattr(pdq, "HASH_TIMEOUT_SECONDS", 2)
    pixels = decoded(natural_images()["astronaut"])
    hashes = pdq.HashProcesses(1)
    try:
        expected = hashes.start(pixels)()
        wedged = hashes._pool
        [process] = wedged._processes.values()
        os.kill(process.pid, signal.SIGSTOP)  # stuck (a debugger, the disk): alive, answering nothing
        assert hashes.start(pixels)() == expected  # after the timeout, here
        # The wedged process was killed, not left behind (the pool's own thread may be the one that reaps it, so
        # its exit code is not this test's to read: it is gone, or a corpse of SIGKILL's, within seconds).
        deadline = time.monotonic() + 30
        while not gone(process.pid):
            assert time.monotonic() < deadline, "the wedged hashing process is still there"
            time.sleep(0.1)
        assert hashes.start(pixels)() == expected and hashes._pool is not wedged
    finally:
        hashes.shutdown()


def test_processes_that_cannot_start_are_given_up_for_the_threads(monkeypatch, caplog):
    import worker.pdq as pdq

    monkeypatch.setattr(pdq, "BROKEN_POOLS_TO_GIVE_UP", 2)
    monkeypatch.setattr(pdq, "_hashing_process", os.abort)  # every hashing process dies as it starts
    pixels = decoded(natural_images()["astronaut"])
    expected = pdq.compute_pdq(pixels)
    hashes = pdq.HashProcesses(1)
    try:
        assert hashes.start(pixels)() == expected and hashes.processes == 1  # here; a new pool next time
        assert hashes.start(pixels)() == expected
        assert hashes.processes == 0 and hashes._pool is None and "hashing in the task threads" in caplog.text
        assert hashes.start(pixels)() == expected and hashes._pool is None  # no more pools
    finally:
        hashes.shutdown()


HASHING_PARENT = """
import sys
from tests.conftest import natural_images
from tests.test_pdq import decoded
from worker.pdq import HashProcesses

if __name__ == "__main__":
    hashes = HashProcesses(1)
    hashes.start(decoded(natural_images()["astronaut"]))()
    [process] = hashes._pool._processes.values()
    print(process.pid, flush=True)
    sys.stdin.read()  # until killed
"""


def test_hashing_processes_exit_when_their_worker_is_killed(tmp_path):
    import subprocess
    import sys

    import psutil

    from tests.conftest import REPO

    script = tmp_path / "parent.py"
    script.write_text(HASHING_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    child = None
    try:
        ready = select.select([parent.stdout], [], [], 120)[0]  # (a busy machine: its imports take seconds)
        assert ready, "the parent never started its hashing process"
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        parent.kill()  # SIGKILL: no chance to stop its pool
        parent.wait(timeout=30)
        child.wait(timeout=60)  # gone by itself (psutil.TimeoutExpired otherwise)
    finally:
        parent.kill()
        parent.wait(timeout=30)
        parent.stdin.close()
        parent.stdout.close()
        if child is not None and child.is_running():
            child.kill()  # (what the test checks failed: leave nothing behind)

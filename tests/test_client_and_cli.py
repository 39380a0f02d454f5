"""The Python client and the `lookalike` command (client/lookalike_client: client.py, cli.py), against the real
stack."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike_client import ApiError, Client, TaskFailed
from tests.conftest import DATA, natural_images
from tests.local_http import Answer
from tests.test_pdq import decoded
from worker.pdq import compute_pdq

LOOKALIKE = Path(sys.executable).parent / "lookalike"  # the console script lookalike-client installs
# Ids a caller may choose and `lookalike index` makes from file names: each reserved character of a URL.
ODD_IDS = ["uploads/a b#1?x=%41%/cat.jpg", "100%", "#hash", "what?.jpg", "a+b&c=d;e", "ünï cødé/ø.jpg", "x%2Fy"]


@pytest.fixture
def client(api) -> Client:
    return Client(api.base_url, timeout=60)


def test_the_client_indexes_queries_checks_and_deletes(client, collection):
    images = natural_images()
    submitted = client.index(collection, images["astronaut"], image_id="people/astronaut", metadata={"n": 1})
    assert submitted.image_id == "people/astronaut" and not submitted.replayed
    assert client.wait(submitted.task_id)["state"] == "succeeded"
    batch = client.index_many(collection, [("things/rocket", DATA / "rocket.jpg", {"n": 2}),
                                           ("things/coffee", images["coffee"], None)])
    for item in batch["tasks"]:
        client.result(item["task_id"])
    assert client.image_ids(collection, page_size=1) == {"people/astronaut", "things/rocket", "things/coffee"}
    assert collection in client.collections() and client.collection(collection)["images"] == 3

    result = client.query(collection, DATA / "rocket.jpg", k=2)
    assert [match["id"] for match in result["matches"]][0] == "things/rocket"
    assert client.check(collection, images["coffee"])["best_match"]["id"] == "things/coffee"
    assert client.image(collection, "people/astronaut")["metadata"] == {"n": 1}

    client.delete_image(collection, "people/astronaut")
    with pytest.raises(ApiError) as error:
        client.image(collection, "people/astronaut")
    assert (error.value.status, error.value.code) == (404, "image_not_found")
    with pytest.raises(ApiError) as error:
        client.index(collection, b"not an image")
    assert error.value.code == "unsupported_media_type"


def test_the_client_retries_busy_answers_with_one_idempotency_key(web_server):
    calls = []

    def busy_twice(request):
        calls.append(request)
        if len(calls) <= 2:
            return Answer(503, json.dumps({"error": {"code": "store_unavailable", "message": "x", "details": {}}})
                          .encode(), {"Retry-After": "0", "Content-Type": "application/json"})
        return Answer(202, json.dumps({"task_id": "t1", "status_url": "/v1/tasks/t1", "image_id": "a"}).encode(),
                      {"Content-Type": "application/json"})

    web_server.route("/v1/collections/retry/images", busy_twice)
    submitted = Client(web_server.base_url, backoff_seconds=0.01).index("retry", b"\xff\xd8 bytes", image_id="a")
    assert submitted.task_id == "t1" and len(calls) == 3
    assert len({call.headers["Idempotency-Key"] for call in calls}) == 1  # a retry is the same request

    web_server.route("/v1/collections/down/images", Answer(503, b"{}", {"Retry-After": "0"}))
    with pytest.raises(ApiError) as error:
        Client(web_server.base_url, retries=2, backoff_seconds=0.01).index("down", b"x")
    assert error.value.status == 503 and len(web_server.requests_to("/v1/collections/down/images")) == 3

    web_server.route("/v1/collections/elsewhere",
                     Answer(200, b"<html>a proxy's page</html>", {"Content-Type": "text/html"}))
    with pytest.raises(ApiError) as error:
        Client(web_server.base_url).collection("elsewhere")
    assert (error.value.status, error.value.code) == (200, "not_json")


def lookalike(api, *args: str, input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    return subprocess.run([str(LOOKALIKE), "--url", api.base_url, *args], capture_output=True, text=True, timeout=300,
                          input=input)


def test_cli_indexes_a_tree_resumes_and_reports_failures(api, collection, tmp_path):
    tree = tmp_path / "photos"
    (tree / "2026" / "cats").mkdir(parents=True)
    shutil.copy(DATA / "chelsea.jpg", tree / "2026" / "cats" / "chelsea.jpg")
    shutil.copy(DATA / "moon.jpg", tree / "moon.jpg")
    shutil.copy(DATA / "horse.jpg", tree / "2026" / "horse.JPG")
    (tree / "notes.txt").write_text("not an image, not sent")
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)

    first = lookalike(api, "index", str(tree), "--collection", collection, "--batch-size", "2")
    assert first.returncode == 1, first.stderr
    assert "4 images found, 0 already indexed, 4 to index" in first.stderr
    assert "img/s" in first.stderr  # tqdm's progress bar with its rate
    assert "indexed 3, skipped 0, failed 1" in first.stderr and "broken.png: unsupported_media_type" in first.stderr
    assert Client(api.base_url).image_ids(collection) == {"2026/cats/chelsea.jpg", "moon.jpg", "2026/horse.JPG"}

    shutil.copy(DATA / "coins.jpg", tree / "broken.png")  # fixed (a JPEG named .png is fine: magic bytes decide)
    again = lookalike(api, "index", str(tree), "--collection", collection)
    assert again.returncode == 0, again.stderr
    assert "4 images found, 3 already indexed, 1 to index" in again.stderr
    assert "indexed 1, skipped 3, failed 0" in again.stderr


def test_cli_queries_checks_and_lists(api, collection):
    client = Client(api.base_url)
    client.result(client.index(collection, DATA / "rocket.jpg", image_id="rocket").task_id)
    unconfigured = lookalike(api, "check", str(DATA / "rocket.jpg"), "-c", collection)
    assert unconfigured.returncode == 6, unconfigured.stderr  # no verdict, but a near-duplicate: fail closed
    assert "verdict: none given (collection not configured; near-duplicate: yes)" in unconfigured.stdout
    assert "no moderation settings" in unconfigured.stderr
    client.set_collection(collection, match_threshold=0.95, kind="block")

    table = lookalike(api, "query", str(DATA / "rocket.jpg"), "-c", collection, "-k", "3")
    assert table.returncode == 0, table.stderr
    assert "rocket" in table.stdout and "verdict: block" in table.stdout
    as_json = json.loads(lookalike(api, "query", str(DATA / "rocket.jpg"), "-c", collection, "--json").stdout)
    assert as_json["matches"][0]["id"] == "rocket"

    blocked = lookalike(api, "check", str(DATA / "rocket.jpg"), "-c", collection)
    assert blocked.returncode == 3 and "verdict: block" in blocked.stdout
    clean = lookalike(api, "check", str(DATA / "rocket.jpg"), "-c", collection, "--signals", "pdq", "--json")
    assert json.loads(clean.stdout)["best_match"]["matched_by"] == ["pdq"]

    listed = lookalike(api, "collections", "--json")
    info = next(info for info in json.loads(listed.stdout) if info["collection"] == collection)
    assert info["images"] == 1 and info["settings"]["kind"] == "block"
    client.set_collection(collection, match_threshold=0.95, kind="block", whitening=True)
    table = lookalike(api, "collections").stdout
    row = next(line for line in table.splitlines() if line.startswith(collection))
    assert row.split()[1:] == ["1", "block", "0.95", "on,", "not", "learned", "yet"]

    missing = lookalike(api, "task", "no-such-task")
    assert missing.returncode == 1 and "task_not_found" in missing.stderr


def test_cli_proposes_and_applies_a_threshold(api, collection, tmp_path):
    client = Client(api.base_url)
    client.result(client.index(collection, DATA / "moon.jpg", image_id="moon").task_id)
    pairs = tmp_path / "pairs.jsonl"
    rows = [(0.99, True), (0.97, True), (0.96, False), (0.95, True), (0.90, False), (0.85, True)]
    pairs.write_text("".join(json.dumps({"score": score, "same": same}) + "\n" for score, same in rows))

    proposed = lookalike(api, "calibrate", str(pairs), "--precision", "0.75", "-c", collection, "--apply")
    assert proposed.returncode == 0, proposed.stderr
    assert json.loads(proposed.stdout) == {"pairs": 6, "target_precision": 0.75, "threshold": 0.95,
                                           "precision": 0.75, "recall": 0.75}
    assert client.collection(collection)["settings"]["match_threshold"] == 0.95
    strict = lookalike(api, "calibrate", str(pairs), "--precision", "1.0")
    assert strict.returncode == 0 and json.loads(strict.stdout)["threshold"] == 0.97
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"score": "high"}\n')
    assert lookalike(api, "calibrate", str(bad)).returncode == 2


def test_the_client_round_trips_ids_with_reserved_characters(api, client, collection):
    """Every id goes into the URL path percent-encoded as one segment: image() and delete_image() find it."""
    vectors = [[1.0 if dimension == n else 0.0 for dimension in range(512)] for n in range(len(ODD_IDS))]
    stored = api.http.post(api.url(f"/v1/collections/{collection}/vectors"),
                           json={"items": [{"id": image_id, "vector": vector, "metadata": {"n": n}}
                                           for n, (image_id, vector) in enumerate(zip(ODD_IDS, vectors))]})
    assert stored.status_code == 201, stored.text
    indexed = client.index(collection, DATA / "moon.jpg", image_id="moon #1?.jpg")
    assert client.wait(indexed.task_id)["state"] == "succeeded"
    assert client.image_ids(collection) == {*ODD_IDS, "moon #1?.jpg"}
    for n, image_id in enumerate(ODD_IDS):
        image = client.image(collection, image_id)
        assert (image["id"], image["metadata"]) == (image_id, {"n": n})
    assert client.image(collection, "moon #1?.jpg")["id"] == "moon #1?.jpg"

    for image_id in ODD_IDS:
        assert client.delete_image(collection, image_id)["id"] == image_id
        with pytest.raises(ApiError) as error:
            client.image(collection, image_id)
        assert (error.value.status, error.value.code) == (404, "image_not_found")
    assert client.image_ids(collection) == {"moon #1?.jpg"}
    with pytest.raises(ApiError) as error:
        client.delete_image(collection, "uploads/a b#1?x=%41%/cat.jpg")
    assert (error.value.status, error.value.code) == (404, "image_not_found")


def test_cli_version_and_usage_errors_exit_2():
    from importlib.metadata import version

    shown = subprocess.run([str(LOOKALIKE), "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == f"lookalike, version {version('lookalike-client')}"
    wrong = [["no-such-command"], ["query", str(DATA / "moon.jpg")], ["--url", "ftp://example.org", "collections"],
             ["settings", "photos", "--set", "kind"], ["delete", "--collection", "photos"], ["index", "--json"],
             ["calibrate", str(DATA / "moon.jpg"), "--apply"], ["query", "/no/such/file.jpg", "-c", "photos"],
             ["check", "-c", "photos"], ["check", str(DATA / "moon.jpg"), "--hash", "0" * 64, "-c", "photos"],
             ["query", "--hash-quality", "50", str(DATA / "moon.jpg"), "-c", "photos"],
             ["bank-hashes", "-c", "photos", "/no/such/file.csv"]]
    for args in wrong:  # none of these reaches the service (nothing listens on port 1)
        run = subprocess.run([str(LOOKALIKE), "--url", "http://127.0.0.1:1", *args] if args[0] != "--url"
                             else [str(LOOKALIKE), *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, (args, run.stderr)
        assert "cannot reach" not in run.stderr


def test_cli_service_errors_exit_1_and_an_unreachable_service_exits_5(api, collection):
    assert lookalike(api, "task", "no-such-task").returncode == 1
    never = lookalike(api, "settings", collection)
    assert never.returncode == 1 and "collection_not_found" in never.stderr
    refused = lookalike(api, "settings", collection, "--set", "match_threshold=5")
    assert refused.returncode == 1 and "invalid_collection_settings" in refused.stderr
    for args in (["collections", "--json"], ["delete", "-c", collection, "an-id"]):
        unreachable = subprocess.run([str(LOOKALIKE), "--url", "http://127.0.0.1:1", *args],
                                     capture_output=True, text=True, timeout=120)
        assert unreachable.returncode == 5, unreachable.stderr
        assert "cannot reach http://127.0.0.1:1" in unreachable.stderr and unreachable.stdout == ""


def test_cli_indexes_odd_file_names_with_json_then_deletes_sets_and_drops(api, client, collection, tmp_path):
    tree = tmp_path / "photos"
    (tree / "sub dir#2").mkdir(parents=True)
    shutil.copy(DATA / "moon.jpg", tree / "a b#1?x=%41%.jpg")
    shutil.copy(DATA / "rocket.jpg", tree / "sub dir#2" / "100%.jpg")
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)

    indexed = lookalike(api, "index", str(tree), "-c", collection, "--json")
    assert indexed.returncode == 1, indexed.stderr  # one image failed
    assert json.loads(indexed.stdout) == {
        "collection": collection, "found": 3, "skipped": 0, "indexed": 2, "failed": 1,
        "failures": [{"id": "broken.png", "code": "unsupported_media_type",
                      "message": json.loads(indexed.stdout)["failures"][0]["message"]}]}
    assert client.image(collection, "sub dir#2/100%.jpg")["id"] == "sub dir#2/100%.jpg"
    (tree / "broken.png").unlink()
    again = lookalike(api, "index", str(tree), "-c", collection, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 2

    deleted = lookalike(api, "delete", "-c", collection, "a b#1?x=%41%.jpg", "no such?", "--json")
    assert deleted.returncode == 1
    assert json.loads(deleted.stdout)["deleted"] == ["a b#1?x=%41%.jpg"]
    assert [failure["code"] for failure in json.loads(deleted.stdout)["failures"]] == ["image_not_found"]
    assert client.image_ids(collection) == {"sub dir#2/100%.jpg"}

    before = json.loads(lookalike(api, "settings", collection, "--json").stdout)
    assert before["collection"] == collection and before["settings"]["kind"] == "block"
    changed = lookalike(api, "settings", collection, "--set", "match_threshold=0.8", "--set", "kind=allow")
    assert changed.returncode == 0, changed.stderr
    assert re.search(r'^kind +"allow"$', changed.stdout, re.MULTILINE)
    after = client.collection(collection)["settings"]
    assert after == {**before["settings"], "match_threshold": 0.8, "kind": "allow"}  # the rest kept

    kept = lookalike(api, "drop", collection, input="n\n")
    assert kept.returncode == 1 and f"Drop collection {collection} and its 1 images?" in kept.stderr
    assert client.collection(collection)["images"] == 1
    dropped = lookalike(api, "drop", collection, "--json", input="y\n")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout) == {"collection": collection, "deleted": True, "images": 1}
    gone = lookalike(api, "drop", collection, "--yes")
    assert gone.returncode == 1 and "collection_not_found" in gone.stderr


def pdq_hashes(*names: str) -> dict:
    """The PDQ hashes (``.hex``, ``.quality``) of test photographs, as a hash list would carry them."""
    images = natural_images()
    return {name: compute_pdq(decoded(images[name])) for name in names}


def record_requests(client: Client) -> list:
    """Every answer the client's session receives from now on (its request: ``.request``)."""
    seen: list = []
    client.http.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response))
    return seen


def test_the_client_banks_hashes_in_batches_and_checks_and_queries_by_hash(client, collection):
    hashes = pdq_hashes("camera", "astronaut", "rocket")
    ids = dict(zip(hashes, ODD_IDS))  # ids with each reserved character of a URL
    items = ({"id": ids[name], "hash": pdq.hex, "quality": pdq.quality, "metadata": {"name": name}}
             for name, pdq in hashes.items())  # any iterable: a generator here
    seen = record_requests(client)
    banked = client.bank_hashes(collection, items, batch_size=2)
    assert {key: banked[key] for key in ("collection", "stored", "replaced")} == \
        {"collection": collection, "stored": 3, "replaced": 0}
    assert re.fullmatch(r"\d+:\d+(,\d+:\d+)*", banked["write_token"])
    assert [(response.request.method, response.status_code) for response in seen] == [("POST", 201)] * 2
    assert client.image(collection, ids["camera"])["pdq"] == {"hash": hashes["camera"].hex,
                                                             "quality": hashes["camera"].quality}
    again = client.bank_hashes(collection, [{"id": ids["rocket"], "hash": hashes["rocket"].hex}])
    assert (again["stored"], again["replaced"]) == (1, 1)
    assert client.bank_hashes(collection, []) == {"collection": collection, "stored": 0, "replaced": 0,
                                                   "write_token": None}

    checked = client.check(collection, hash=hashes["camera"].hex, hash_quality=hashes["camera"].quality,
                           write_token=banked["write_token"])
    assert checked["best_match"]["id"] == ids["camera"] and checked["best_match"]["pdq_distance"] == 0
    assert checked["best_match"]["metadata"] == {"name": "camera"} and checked["pdq_hash"] == hashes["camera"].hex
    assert checked["near_duplicate"] is True and checked["verdict"] is None  # settings never set: no verdict
    queried = client.query(collection, hash=hashes["astronaut"].hex, k=3)
    assert queried["matches"][0]["id"] == ids["astronaut"] and queried["signals"] == ["pdq"]

    # A refused item: its position in what was given (across batches), and what was banked before it.
    bad = [{"id": "ok/1", "hash": hashes["camera"].hex}, {"id": "ok/2", "hash": hashes["rocket"].hex},
           {"id": "bad", "hash": "not hex"}]
    with pytest.raises(ApiError) as error:
        client.bank_hashes(collection, bad, batch_size=2)
    assert (error.value.status, error.value.code) == (400, "invalid_hash")
    assert error.value.details["item"] == 2 and error.value.details["banked"]["stored"] == 2
    assert {"ok/1", "ok/2"} <= client.image_ids(collection) and "bad" not in client.image_ids(collection)


def test_check_with_wait_is_one_round_trip_and_polls_when_the_answer_is_202(api, client, collection, web_server):
    camera = pdq_hashes("camera")["camera"]
    client.bank_hashes(collection, [{"id": "list/camera", "hash": camera.hex, "quality": camera.quality}])
    seen = record_requests(client)
    result = client.check(collection, hash=camera.hex, wait=30)
    assert result["best_match"]["id"] == "list/camera"
    [answer] = seen  # the check's own answer held the result: no poll of the task
    assert (answer.request.method, answer.status_code) == ("POST", 200)
    assert answer.request.headers["Prefer"] == "wait=30" and answer.headers["Preference-Applied"] == "wait=30"

    seen.clear()  # wait=0: no preference, the usual 202, then the task polled
    assert client.check(collection, hash=camera.hex, wait=0)["best_match"]["id"] == "list/camera"
    assert "Prefer" not in seen[0].request.headers and seen[0].status_code == 202
    polls = [response.request.path_url.split("?")[0] for response in seen[1:]]
    assert polls and set(polls) == {f"/v1/tasks/{seen[0].json()['task_id']}"}

    seen.clear()  # asked to wait, but the task outlasts the wait (a slow image URL): 202, then polled
    slow = web_server.route(f"/slow-{collection}.jpg", Answer(200, natural_images()["camera"], delay_seconds=1.6))
    assert client.check(collection, url=slow, wait=1)["best_match"]["id"] == "list/camera"
    assert seen[0].request.headers["Prefer"] == "wait=1" and seen[0].status_code == 202
    assert any(response.request.path_url.startswith("/v1/tasks/") for response in seen[1:])


def test_check_with_wait_takes_a_finished_task_from_the_answer(web_server):
    """A 200 answer with the finished task: its result, or TaskFailed as result() raises; never a poll."""
    def finished(state: str, task_id: str) -> Answer:
        task = {"task_id": task_id, "kind": "check", "state": state,
                "result": {"verdict": "block", "near_duplicate": True} if state == "succeeded" else None,
                "error": {"code": "image_undecodable", "message": "x", "details": {}} if state == "failed" else None}
        return Answer(200, json.dumps(task).encode(), {"Content-Type": "application/json",
                                                      "Preference-Applied": "wait=10"})

    web_server.route("/v1/collections/waited/checks", finished("succeeded", "waited-1"))
    web_server.route("/v1/collections/failed/checks", finished("failed", "failed-1"))
    client = Client(web_server.base_url)
    assert client.check("waited", hash="0" * 64) == {"verdict": "block", "near_duplicate": True}
    [posted] = web_server.requests_to("/v1/collections/waited/checks")
    assert posted.headers["Prefer"] == "wait=10" and posted.body == b"hash=" + b"0" * 64
    with pytest.raises(TaskFailed) as failure:
        client.check("failed", hash="0" * 64)
    assert failure.value.code == "image_undecodable"
    assert not [request for request in web_server.received if request.path.startswith(("/v1/tasks/waited-1",
                                                                                        "/v1/tasks/failed-1"))]


def test_cli_banks_hash_files_checks_by_hash_and_fails_closed_without_settings(api, client, collection, tmp_path):
    hashes = pdq_hashes("camera", "astronaut", "rocket")
    listed = tmp_path / "list.jsonl"
    listed.write_text(json.dumps({"id": ODD_IDS[0], "hash": hashes["camera"].hex, "quality": hashes["camera"].quality,
                                  "metadata": {"list": "shared"}}) + "\n\n")
    banked = lookalike(api, "bank-hashes", str(listed), "-c", collection)
    assert banked.returncode == 0, banked.stderr
    assert banked.stdout.strip() == f"banked 1 hashes in {collection} (replaced 0)"
    assert client.image(collection, ODD_IDS[0])["metadata"] == {"list": "shared"}

    table = tmp_path / "list.csv"  # a header, a quoted id with a comma, a TSV line without quality
    table.write_text(f"id,hash,quality\r\n\"a,b&c=d\",{hashes['astronaut'].hex},{hashes['astronaut'].quality}\r\n"
                     f"#hash\t{hashes['rocket'].hex.upper()}\r\n")
    as_json = lookalike(api, "bank-hashes", str(table), "-c", collection, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert {key: value for key, value in json.loads(as_json.stdout).items() if key != "write_token"} == \
        {"collection": collection, "stored": 2, "replaced": 0}
    assert client.image_ids(collection) == {ODD_IDS[0], "a,b&c=d", "#hash"}
    assert client.image(collection, "#hash")["pdq"] == {"hash": hashes["rocket"].hex, "quality": 100}

    refused = tmp_path / "refused.csv"  # the second request (one hash each) is refused: the first stays banked
    refused.write_text(f"fine,{hashes['rocket'].hex}\n\nbad id,{'z' * 64}\nlater,{hashes['rocket'].hex}\n")
    failed = lookalike(api, "bank-hashes", str(refused), "-c", collection, "--batch-size", "1", "--json")
    assert failed.returncode == 1, failed.stderr
    assert "refused line 3 (item 1, id 'bad id'): invalid_hash:" in failed.stderr
    assert json.loads(failed.stdout)["refused"] == {"item": 1, "line": 3, "id": "bad id", "code": "invalid_hash",
                                                    "message": json.loads(failed.stdout)["refused"]["message"]}
    assert json.loads(failed.stdout)["stored"] == 1 and "later" not in client.image_ids(collection)
    unreadable = tmp_path / "unreadable.csv"
    unreadable.write_text("just-an-id\n")
    assert lookalike(api, "bank-hashes", str(unreadable), "-c", collection).returncode == 2

    # No settings: a near-duplicate gets no verdict, and the check fails closed (6, not 0).
    camera = lookalike(api, "check", "--hash", hashes["camera"].hex, "-c", collection)
    assert camera.returncode == 6, camera.stderr
    assert "verdict: none given (collection not configured; near-duplicate: yes)" in camera.stdout
    assert ODD_IDS[0] in camera.stdout and "no moderation settings" in camera.stderr
    unlike = bytes(255 - byte for byte in bytes.fromhex(hashes["camera"].hex)).hex()  # 256 bits from the camera's
    clean = lookalike(api, "check", "--hash", unlike, "--hash-quality", "90", "-c", collection, "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["near_duplicate"] is False and json.loads(clean.stdout)["verdict"] is None
    found = lookalike(api, "query", "--hash", hashes["astronaut"].hex, "-c", collection, "--json", "--wait", "0")
    assert json.loads(found.stdout)["matches"][0]["id"] == "a,b&c=d"
    bad_hash = lookalike(api, "check", "--hash", "abc", "-c", collection)
    assert bad_hash.returncode == 1 and "invalid_hash" in bad_hash.stderr

    assert lookalike(api, "settings", collection, "--set", "kind=block").returncode == 0
    blocked = lookalike(api, "check", "--hash", hashes["camera"].hex, "-c", collection)
    assert blocked.returncode == 3 and "verdict: block" in blocked.stdout, blocked.stderr
    assert lookalike(api, "check", "--hash", unlike, "-c", collection).returncode == 0

"""A collection of 8 buckets over 4 search groups (one search process each) on a real 3-master Redis Cluster, the
broker apart: each process holds only its groups' buckets; a query or check fans out one search per group and the
last answer merges them -- the same ids and scores, ties included, as one exact search over all the vectors; a
group that does not answer fails the task with search_unavailable, never an answer from the others alone."""

import json
import time

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared import keys
from shared.embedded_redis import EmbeddedRedis, free_port
from shared.search_groups import bucket_groups
from shared.settings import Settings
from shared.store import Store
from tests.conftest import consumer_alive, finished_task, search_process, split_roles

GROUPS = ("g1", "g2", "g3", "g4")
BUCKETS = 8
IMAGES = 400
GATHER_TIMEOUT_SECONDS = 8


@pytest.fixture(scope="module")
def sharded(redis_cluster, service_env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scatter")
    broker = EmbeddedRedis(folder / "broker", free_port()).start()
    env = service_env | {"LOOKALIKE_REDIS_MODE": "cluster", "LOOKALIKE_REDIS_URL": redis_cluster.url,
                         "LOOKALIKE_BROKER_URL": broker.url, "LOOKALIKE_SEARCH_GROUPS": ",".join(GROUPS),
                         "LOOKALIKE_GATHER_TIMEOUT_SECONDS": str(GATHER_TIMEOUT_SECONDS),
                         "LOOKALIKE_LOAD_WAIT_SECONDS": "5", "LOOKALIKE_DATA_DIR": str(folder / "data"),
                         "LOOKALIKE_STALENESS_SECONDS": "60"}
    settings = Settings(redis_mode="cluster", redis_url=redis_cluster.url, broker_url=broker.url, auth=False,
                        rate_limit="", search_groups=GROUPS)
    store = Store.from_settings(settings)
    try:
        with split_roles(env, folder, store, GROUPS) as (processes, ports):
            yield create_app(settings).test_client(), store, processes, ports, env, folder
    finally:
        broker.stop()


def filled(client, collection: str, prefix: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """A collection of BUCKETS buckets holding ``count`` random unit vectors (stored through the API), by id."""
    assert client.put(f"/v1/collections/{collection}", json={"buckets": BUCKETS}).status_code == 200
    rows = np.random.default_rng(seed).standard_normal((count, 512)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    vectors = {f"{prefix}{n:03d}": row for n, row in enumerate(rows)}
    items = [{"id": image_id, "vector": vector.tolist()} for image_id, vector in vectors.items()]
    assert client.post(f"/v1/collections/{collection}/vectors", json={"items": items}).status_code == 201
    return vectors


def ask(client, store: Store, collection: str, what: str, vector: np.ndarray, **form) -> dict:
    data = {"vector": json.dumps(vector.tolist()), **{name: json.dumps(value) if isinstance(value, dict) else str(value)
                                                       for name, value in form.items()}}
    response = client.post(f"/v1/collections/{collection}/{what}", data=data)
    assert response.status_code == 202, response.json
    return finished_task(store, response.json["task_id"])


def expected(vectors: dict[str, np.ndarray], query: np.ndarray, k: int, keep=lambda image_id: True) -> list:
    """One exact search over every vector, as the service scores and orders it."""
    unit = query / np.linalg.norm(query)
    scored = [(image_id, round(float(vector.astype(np.float64) @ unit.astype(np.float64)), 6))
              for image_id, vector in vectors.items() if keep(image_id)]
    return sorted(scored, key=lambda match: (-match[1], match[0]))[:k]


def assert_same_ranking(matches: list[dict], ranking: list[tuple[str, float]]) -> None:
    """The same ids in the same order, scores equal to their 6 decimals (the service normalises vectors itself,
    which may move a score's last decimal against this test's own normalisation)."""
    assert [match["id"] for match in matches] == [image_id for image_id, _ in ranking]
    assert all(abs(match["score"] - score) <= 2e-6 for match, (_, score) in zip(matches, ranking)), (matches, ranking)


def samples(port: int, name: str) -> list:
    page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [sample for family in text_string_to_metric_families(page) for sample in family.samples
            if sample.name == name]


def replica_parts(port: int) -> dict[str, float]:
    return {sample.labels["collection"]: sample.value for sample in samples(port, "lookalike_replica_vectors")}


def group_counter(ports: dict, name: str, group: str, **labels) -> float:
    """A per-group counter summed over the processes serving metrics on ``ports`` (whichever counted it)."""
    return sum(sample.value for port in ports.values() for sample in samples(port, name)
               if sample.labels.get("group") == group and labels.items() <= sample.labels.items())


def test_a_collection_over_four_groups_answers_as_one_exact_search(sharded, collection):
    client, store, processes, ports, *_ = sharded
    assert client.put(f"/v1/collections/{collection}", json={"buckets": BUCKETS}).status_code == 200
    rng = np.random.default_rng(21)
    rows = rng.standard_normal((IMAGES, 512)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows[50:60] = rows[49]  # ties: eleven copies of one vector, spread over the buckets
    ids = [f"img/{n:03d}" for n in range(IMAGES)]
    vectors = dict(zip(ids, rows))
    for start in range(0, IMAGES, 100):
        items = [{"id": image_id, "vector": vectors[image_id].tolist(), "metadata": {"even": n % 2 == 0}}
                 for n, image_id in enumerate(ids[start:start + 100], start)]
        assert client.post(f"/v1/collections/{collection}/vectors", json={"items": items}).status_code == 201

    for query in (rows[49], rows[7] + 0.3 * rows[8], rng.standard_normal(512).astype(np.float32)):
        result = ask(client, store, collection, "queries", query, k=20)
        assert result["state"] == "succeeded", result
        assert_same_ranking(result["result"]["matches"], expected(vectors, query, 20))
        filtered = ask(client, store, collection, "queries", query, k=15, filter={"even": True})["result"]
        assert_same_ranking(filtered["matches"], expected(vectors, query, 15,
                                                          keep=lambda image_id: int(image_id[4:]) % 2 == 0))
    check = ask(client, store, collection, "checks", rows[123])["result"]
    assert check["verdict"] == "block"
    assert check["best_match"]["id"] == "img/123" and check["best_match"]["score"] == 1.0

    # Each search process holds its group's two buckets, no others.
    placement = bucket_groups(collection, {"group": None}, BUCKETS, GROUPS)
    assert sorted(len(buckets) for buckets in placement.values()) == [2, 2, 2, 2]
    for group in GROUPS:
        held = {part: count for part, count in replica_parts(ports[group]).items() if part.startswith(collection)}
        assert set(held) == {f"{collection}/{bucket}" for bucket in placement[group]}, (group, held)
    assert sum(count for group in GROUPS for part, count in replica_parts(ports[group]).items()
               if part.startswith(collection)) == IMAGES

    # Each group counted its answers, on its own metrics page.
    for group in GROUPS:
        assert group_counter({group: ports[group]}, "lookalike_search_group_answers_total", group,
                             outcome="answered") >= 7, group

    # Query expansion would need every bucket's best matches first: refused, not answered from a group's.
    expanded = ask(client, store, collection, "queries", rows[3], expand=2)
    assert expanded["state"] == "failed" and expanded["error"]["code"] == "expand_unavailable"


def test_a_group_that_does_not_answer_fails_the_task_and_nothing_comes_back_short(sharded, collection):
    client, store, processes, ports, env, folder = sharded
    assert client.put(f"/v1/collections/{collection}", json={"buckets": BUCKETS}).status_code == 200
    rng = np.random.default_rng(22)
    rows = rng.standard_normal((40, 512)).astype(np.float32)
    items = [{"id": f"v{n}", "vector": row.tolist()} for n, row in enumerate(rows)]
    assert client.post(f"/v1/collections/{collection}/vectors", json={"items": items}).status_code == 201
    assert ask(client, store, collection, "queries", rows[0], k=5)["state"] == "succeeded"

    placement = bucket_groups(collection, {"group": None}, BUCKETS, GROUPS)
    silent = "g3"
    processes[silent].process.kill()  # its group's only process: no one answers for its buckets
    processes[silent].process.wait()
    try:
        started = time.monotonic()
        failed = ask(client, store, collection, "queries", rows[0], k=5)
        waited = time.monotonic() - started
        assert failed["state"] == "failed" and failed["result"] is None, failed
        assert failed["error"]["code"] == "search_unavailable"
        assert failed["error"]["details"]["groups_missing"] == [silent]
        assert failed["error"]["details"]["buckets_missing"] == placement[silent]
        assert waited >= GATHER_TIMEOUT_SECONDS
        alive = {name: port for name, port in ports.items() if name != silent}
        assert group_counter(alive, "lookalike_search_groups_missing_total", silent) == 1
        # A caller that takes a partial answer gets the other groups' buckets, ranked as one search over them,
        # and the answer says which buckets are missing.
        answered = ask(client, store, collection, "queries", rows[0], k=5, partial="true")
        assert answered["state"] == "succeeded", answered
        assert answered["result"]["partial"] == {"groups_missing": [silent], "buckets_missing": placement[silent]}
        held = {f"v{n}": row / np.linalg.norm(row) for n, row in enumerate(rows)  # (stored normalised)
                if keys.bucket_of(f"v{n}", BUCKETS) not in placement[silent]}
        assert_same_ranking(answered["result"]["matches"], expected(held, rows[0], 5))
        checked = ask(client, store, collection, "checks", rows[1], partial="true")["result"]
        assert checked["partial"]["groups_missing"] == [silent]
    finally:  # the group back: its queued answer finds the task finished; new queries are whole again
        processes[silent] = search_process(f"search-{silent}-again", silent, env, folder, ports[silent])
        processes[silent].wait_until(lambda: consumer_alive(store, processes[silent].process.pid), "heartbeat")
    again = ask(client, store, collection, "queries", rows[0], k=5)
    assert again["state"] == "succeeded" and again["result"]["matches"][0]["id"] == "v0"
    assert store.get_task(failed["task_id"])["state"] == "failed"  # the late answer changed nothing


def test_a_bucket_moves_to_another_group_under_query_load_without_a_failed_or_short_answer(sharded, collection):
    client, store, processes, ports, *_ = sharded
    vectors = filled(client, collection, "m", 200, seed=23)
    rows = np.stack(list(vectors.values()))

    before = client.get(f"/v1/collections/{collection}/buckets").json
    source = next(group for group, buckets in before["placement"].items() if buckets)
    bucket = before["placement"][source][0]
    target = next(group for group in GROUPS if group != source)
    queries = [rows[n] for n in range(0, 200, 25)]
    answers = []

    def query_round() -> None:
        for query in queries:
            answers.append((query, ask(client, store, collection, "queries", query, k=10)))

    query_round()  # every bucket loaded where it is now
    moved = client.put(f"/v1/collections/{collection}/buckets/{bucket}", json={"group": target})
    assert moved.status_code == 202 and moved.json["moving"] == {str(bucket): target}
    deadline = time.monotonic() + 120
    while (now := client.get(f"/v1/collections/{collection}/buckets").json)["moving"]:  # queries all along
        assert time.monotonic() < deadline, now
        query_round()
    assert bucket in now["placement"][target] and bucket not in now["placement"].get(source, [])
    part = f"{collection}/{bucket}"
    assert part in replica_parts(ports[target])
    while part in replica_parts(ports[source]):  # the old group lets go after its grace period, queries going on
        assert time.monotonic() < deadline, "the old group still holds the bucket"
        query_round()
    query_round()

    assert len(answers) > 2 * len(queries)
    for query, answer in answers:
        assert answer["state"] == "succeeded", answer
        assert_same_ranking(answer["result"]["matches"], expected(vectors, query, 10))

    assert client.put(f"/v1/collections/{collection}/buckets/{BUCKETS}", json={"group": target}).status_code == 404
    for path, body, status, code in ((f"{collection}/buckets/0", {"group": "nowhere"}, 400, "invalid_bucket_move"),
                                     (f"{collection}/buckets/0", {"group": target, "x": 1}, 400, "invalid_bucket_move"),
                                     (f"{collection}/buckets/x", {"group": target}, 404, "bucket_not_found"),
                                     (f"{collection}/buckets/-1", {"group": target}, 404, "bucket_not_found"),
                                     ("never-made/buckets/0", {"group": target}, 404, "collection_not_found")):
        refused = client.put(f"/v1/collections/{path}", json=body)
        assert (refused.status_code, refused.json["error"]["code"]) == (status, code), path
    assert client.get(f"/v1/collections/{collection}/buckets").json == now  # nothing changed
    plain = f"{collection}-plain"
    assert client.put(f"/v1/collections/{plain}", json={"kind": "block"}).status_code == 200
    refused = client.put(f"/v1/collections/{plain}/buckets/0", json={"group": target})
    assert refused.status_code == 409 and refused.json["error"]["code"] == "collection_not_sharded"


def test_a_write_token_is_honoured_across_groups(sharded, collection):
    client, store, *_ = sharded
    assert client.put(f"/v1/collections/{collection}", json={"buckets": BUCKETS}).status_code == 200
    rng = np.random.default_rng(24)
    rows = rng.standard_normal((41, 512)).astype(np.float32)
    items = [{"id": f"w{n}", "vector": row.tolist()} for n, row in enumerate(rows[:40])]
    assert client.post(f"/v1/collections/{collection}/vectors", json={"items": items}).status_code == 201
    assert ask(client, store, collection, "queries", rows[40], k=1)["state"] == "succeeded"  # loaded, then stale

    for round_number in range(3):  # each write and delete, seen at once by the query passing its token
        stored = client.post(f"/v1/collections/{collection}/vectors",
                             json={"items": [{"id": f"late{round_number}", "vector": rows[40].tolist()}]})
        token = stored.json["write_token"]
        assert stored.status_code == 201 and ":" in token
        found = ask(client, store, collection, "queries", rows[40], k=1, write_token=token)
        assert found["result"]["matches"][0]["id"] == f"late{round_number}", found
        deleted = client.delete(f"/v1/collections/{collection}/images/late{round_number}")
        found = ask(client, store, collection, "queries", rows[40], k=1, write_token=deleted.json["write_token"])
        assert found["result"]["matches"][0]["id"] != f"late{round_number}", found
    refused = client.post(f"/v1/collections/{collection}/queries",
                          data={"vector": json.dumps(rows[0].tolist()), "write_token": "3:x"})
    assert refused.status_code == 400 and refused.json["error"]["code"] == "invalid_write_token"


def test_a_search_process_killed_mid_query_costs_no_short_answer(sharded, collection):
    """Two processes in one group; one is killed while queries run: each query is answered whole (the dead
    one's messages go to its twin) or fails with a clear code -- never from fewer buckets."""
    client, store, processes, ports, env, folder = sharded
    vectors = filled(client, collection, "k", 120, seed=25)
    rows = np.stack(list(vectors.values()))
    group = "g2"
    twin = search_process(f"search-{group}-twin", group, env, folder)
    twin.wait_until(lambda: consumer_alive(store, twin.process.pid), "heartbeat")
    try:
        assert ask(client, store, collection, "queries", rows[0], k=5)["state"] == "succeeded"  # loaded somewhere
        task_ids, queries = [], [rows[n] for n in range(0, 120, 4)]
        for number, query in enumerate(queries):
            response = client.post(f"/v1/collections/{collection}/queries",
                                   data={"vector": json.dumps(query.tolist()), "k": "10"})
            task_ids.append(response.json["task_id"])
            if number == len(queries) // 3:  # a third sent: the group's first process dies with work in hand
                processes[group].process.kill()
                processes[group].process.wait()
        outcomes = [finished_task(store, task_id, timeout=180) for task_id in task_ids]
    finally:
        twin.stop()
        processes[group] = search_process(f"search-{group}-again", group, env, folder, ports[group])
        processes[group].wait_until(lambda: consumer_alive(store, processes[group].process.pid), "heartbeat")
    answered = 0
    for query, outcome in zip(queries, outcomes):
        if outcome["state"] == "succeeded":
            answered += 1
            assert_same_ranking(outcome["result"]["matches"], expected(vectors, query, 10))
        else:
            assert outcome["error"]["code"] in ("search_unavailable", "collection_loading"), outcome
    assert answered >= len(queries) // 2, [outcome["state"] for outcome in outcomes]


def test_a_check_consults_an_allow_collection_spread_over_the_groups(sharded, collection):
    client, store, processes, ports, *_ = sharded
    blocked = filled(client, collection, "b", 40, seed=26)
    allowed_name = f"{collection}-ok"
    filled(client, allowed_name, "a", 40, seed=27)
    assert client.put(f"/v1/collections/{allowed_name}", json={"kind": "allow"}).status_code == 200
    # An image that is on the block list and, as a known good one, on the allow list too.
    known_good = blocked["b007"]
    assert client.post(f"/v1/collections/{allowed_name}/vectors",
                       json={"items": [{"id": "good", "vector": known_good.tolist()}]}).status_code == 201

    check = ask(client, store, collection, "checks", known_good, allow_collections=json.dumps([allowed_name]))
    result = check["result"]
    assert check["state"] == "succeeded", check
    assert result["best_match"]["id"] == "b007" and result["verdict"] == "allow"
    assert result["allow_match"]["collection"] == allowed_name and result["allow_match"]["id"] == "good"
    other = ask(client, store, collection, "checks", blocked["b011"], allow_collections=json.dumps([allowed_name]))
    assert other["result"]["verdict"] == "block" and other["result"]["allow_match"] is None

    # Each process holds its own buckets of the allow collection, no more.
    placement = bucket_groups(allowed_name, {"group": None}, BUCKETS, GROUPS)
    for group in GROUPS:
        held = {part for part in replica_parts(ports[group]) if part.startswith(f"{allowed_name}/")}
        assert held == {f"{allowed_name}/{bucket}" for bucket in placement[group]}, (group, held)
    assert not store.redis.zrangebyscore("lookalike:gathers", "-inf", "+inf")  # every gather cleared

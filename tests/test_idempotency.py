"""Idempotency-Key on POSTs: a retried request returns its first answer and queues nothing twice."""

import json

import pytest

from shared import keys
from tests.conftest import natural_images, store_snapshot
from tests.test_vectors_and_filters import unit_vectors


def post_image(api, collection, image: bytes, key: str | None, **form):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.http.post(api.url(f"/v1/collections/{collection}/images"), headers=headers,
                         files={"image": ("upload.jpg", image)}, data=form)


def idempotency_records(redis_client) -> dict[bytes, dict]:
    return {key: json.loads(redis_client.get(key)) for key in redis_client.scan_iter("lookalike:idem:*")}


def test_a_retried_upload_returns_the_first_answer_and_indexes_once(api, collection, redis_client):
    images = natural_images()
    first = post_image(api, collection, images["chelsea"], "upload-42", id="cat")
    again = post_image(api, collection, images["chelsea"], "upload-42", id="cat")  # a new multipart boundary
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert api.wait(first)["state"] == "succeeded"
    tasks = list(redis_client.scan_iter(keys.task("*")))  # the task records (not uploads or leases)
    assert sum(json.loads(redis_client.hget(key, "collection")) == collection for key in tasks) == 1
    other = post_image(api, collection, images["chelsea"], "upload-43", id="cat")
    assert other.status_code == 202 and other.json()["task_id"] != first.json()["task_id"]
    api.wait(other)
    record = next(key for key, value in idempotency_records(redis_client).items()
                  if json.loads(value["body"]).get("task_id") == first.json()["task_id"])
    assert 86_000 < redis_client.ttl(record) <= 86_400  # kept 24 h


def test_the_same_key_with_a_different_request_is_refused(api, collection, redis_client):
    images = natural_images()
    assert api.wait(post_image(api, collection, images["horse"], "k-1", id="horse"))["state"] == "succeeded"
    before = store_snapshot(redis_client)
    for changed in ({"image": images["coins"], "id": "horse"}, {"image": images["horse"], "id": "other-id"}):
        response = post_image(api, collection, changed.pop("image"), "k-1", **changed)
        assert response.status_code == 422 and response.json()["error"]["code"] == "idempotency_key_reused"
    assert store_snapshot(redis_client) == before


def test_an_error_is_not_remembered(api, collection):
    bad = post_image(api, collection, b"not an image", "k-err")
    assert bad.status_code == 415
    good = post_image(api, collection, natural_images()["moon"], "k-err")
    assert good.status_code == 202 and "Idempotent-Replayed" not in good.headers
    api.wait(good)


def test_json_and_batch_posts_are_replayed_too(api, collection):
    items = [{"id": "v1", "vector": unit_vectors(1, 9)[0].tolist()}]
    headers = {"Idempotency-Key": "vectors-1", "Content-Type": "application/json"}
    url = api.url(f"/v1/collections/{collection}/vectors")
    first = api.http.post(url, data=json.dumps({"items": items}), headers=headers)
    again = api.http.post(url, data=json.dumps({"items": items}, indent=2), headers=headers)  # same JSON, other bytes
    assert first.status_code == again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["replaced"] == 0  # the first answer, not a second write
    other = api.http.post(url, data=json.dumps({"items": [items[0] | {"id": "v2"}]}), headers=headers)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"

    files = [("image", ("a.jpg", natural_images()["camera"])), ("image", ("b.jpg", natural_images()["page"]))]
    batch_url = api.url(f"/v1/collections/{collection}/batches")
    first_batch = api.http.post(batch_url, files=files, headers={"Idempotency-Key": "batch-1"})
    again_batch = api.http.post(batch_url, files=files, headers={"Idempotency-Key": "batch-1"})
    assert first_batch.status_code == 202 and again_batch.json()["batch_id"] == first_batch.json()["batch_id"]
    for task in first_batch.json()["tasks"]:
        api.http.get(api.url(f"/v1/tasks/{task['task_id']}"), params={"wait": 30})


def test_a_repeat_while_the_first_is_answered_gets_409(api, collection, redis_client):
    first = post_image(api, collection, natural_images()["brick"], "k-busy")
    [record_key] = [key for key, value in idempotency_records(redis_client).items()
                    if value.get("body") and json.loads(value["body"]).get("task_id") == first.json()["task_id"]]
    stored = json.loads(redis_client.get(record_key))
    redis_client.set(record_key, json.dumps({"fingerprint": stored["fingerprint"], "state": "in_progress"}))
    api.wait(first)
    response = post_image(api, collection, natural_images()["brick"], "k-busy")
    assert response.status_code == 409 and response.json()["error"]["code"] == "idempotency_key_in_progress"
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("key", ["", "x" * 256, "clé"])
def test_bad_keys_are_refused(api, collection, redis_client, key):
    before = store_snapshot(redis_client)
    response = post_image(api, collection, natural_images()["moon"], key)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_idempotency_key"
    assert store_snapshot(redis_client) == before


def test_a_form_part_without_a_name_is_fingerprinted_not_a_500(api, collection):
    """Found by the fuzzer once Idempotency-Key was in the document: sorting a form with a nameless part (None)
    beside named ones raised TypeError."""
    body = (b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n'
            b'--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n')
    response = api.http.post(api.url(f"/v1/collections/{collection}/queries"), data=body,
                             headers={"Content-Type": "multipart/form-data; boundary=b", "Idempotency-Key": "nameless"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "image_missing"

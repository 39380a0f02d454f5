"""Bulk upload: many images in one request, each its own task; bad items don't sink the batch."""

import json

import pytest

from shared.queue import INDEX_QUEUE
from tests.conftest import natural_images, store_snapshot

IMAGES = natural_images()


def post_batch(api, collection, files, **form):
    data = {name: json.dumps(value) for name, value in form.items()}
    return api.http.post(api.url(f"/v1/collections/{collection}/batches"),
                         files=[("image", (f"{n}.jpg", content)) for n, content in enumerate(files)], data=data)


def wait_for_batch(api, status_url: str) -> dict:
    for _ in range(120):
        batch = api.http.get(api.url(status_url)).json()
        if batch["finished"]:
            return batch
        pending = next(item["task_id"] for item in batch["items"] if item["state"] in ("queued", "running"))
        api.http.get(api.url(f"/v1/tasks/{pending}"), params={"wait": 5})
    raise AssertionError(f"batch did not finish: {batch}")


def test_bulk_upload_indexes_every_image_with_ids_and_metadata(api, collection):
    names = ["moon", "rocket", "coins", "chelsea"]
    response = post_batch(api, collection, [IMAGES[n] for n in names],
                          ids=[f"bulk/{n}" for n in names], metadata=[{"name": n} for n in names])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 4 and body["rejected"] == 0
    assert response.headers["Location"] == body["status_url"] == f"/v1/batches/{body['batch_id']}"
    assert [item["image_id"] for item in body["tasks"]] == [f"bulk/{n}" for n in names]

    batch = wait_for_batch(api, body["status_url"])
    assert batch["counts"] == {"queued": 0, "running": 0, "succeeded": 4, "failed": 0, "rejected": 0, "expired": 0}
    assert batch["total"] == 4 and all(item["state"] == "succeeded" for item in batch["items"])
    image = api.http.get(api.url(f"/v1/collections/{collection}/images/bulk/coins")).json()
    assert image["metadata"] == {"name": "coins"}
    assert api.query_ids(collection, IMAGES["rocket"], k=1) == ["bulk/rocket"]


def test_bad_items_are_reported_and_the_rest_indexed(api, collection):
    files = [IMAGES["moon"], b"not an image at all", IMAGES["page"], IMAGES["horse"], IMAGES["brick"], b""]
    ids = ["good-1", "text", "bad id/../x", "good-2", "good-1", "empty"]
    metadata = [{}, {}, {}, {"ok": True}, {}, {}]
    response = post_batch(api, collection, files, ids=ids, metadata=metadata)
    assert response.status_code == 202, response.text
    items = response.json()["tasks"]
    errors = [item.get("error", {}).get("code") if item["task_id"] is None else None for item in items]
    assert errors == [None, "unsupported_media_type", "invalid_image_id", None, "duplicate_image_id", "image_empty"]

    batch = wait_for_batch(api, response.json()["status_url"])
    assert batch["counts"]["succeeded"] == 2 and batch["counts"]["rejected"] == 4
    assert api.http.get(api.url(f"/v1/collections/{collection}")).json()["images"] == 2
    assert [item["state"] for item in batch["items"]] == ["succeeded", "rejected", "rejected",
                                                          "succeeded", "rejected", "rejected"]


def test_an_undecodable_item_fails_only_its_own_task(api, collection):
    from tests.test_bad_input import png_with_undecodable_pixels

    response = post_batch(api, collection, [IMAGES["moon"], png_with_undecodable_pixels(), IMAGES["rocket"]])
    batch = wait_for_batch(api, response.json()["status_url"])
    assert [item["state"] for item in batch["items"]] == ["succeeded", "failed", "succeeded"]
    assert batch["items"][1]["error"]["code"] == "image_undecodable"


@pytest.mark.parametrize(
    "files, form, status, code",
    [
        ([], {}, 400, "image_missing"),
        ([IMAGES["moon"]] * 17, {}, 413, "batch_too_large"),  # LOOKALIKE_MAX_BATCH_FILES=16 in tests
        ([IMAGES["moon"]] * 2, {"ids": ["only-one"]}, 400, "invalid_ids"),
        ([IMAGES["moon"]] * 2, {"ids": "not-a-list"}, 400, "invalid_ids"),
        ([IMAGES["moon"]] * 2, {"metadata": [{}]}, 400, "invalid_metadata"),
        ([b"junk", b""], {}, 422, "no_valid_images"),
    ],
)
def test_malformed_batches_are_refused_whole(api, collection, redis_client, files, form, status, code):
    before = store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE)
    response = post_batch(api, collection, files, **form)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE)) == before


def test_unknown_batch_is_404(api):
    response = api.http.get(api.url("/v1/batches/nope"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "batch_not_found"

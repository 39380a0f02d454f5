"""Bad requests get a clear 4xx with a stable code and change nothing in the store."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from shared import keys
from shared.queue import INDEX_QUEUE, QUERY_QUEUE
from tests.conftest import TEST_MAX_UPLOAD_BYTES, natural_images, store_snapshot


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims the given size: a decompression bomb's calling card."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def png_with_corrupt_pixels() -> bytes:
    """A PNG with a damaged chunk: its pixel data does not match the chunk's checksum."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") + 4
    data[start:start + 20] = b"\xff" * 20
    return bytes(data)


def png_with_undecodable_pixels() -> bytes:
    """A PNG whose container is whole (valid chunks and checksums, so it passes the API's
    checks) but whose compressed pixel data is garbage: only decoding finds out."""
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 200)
            + png_chunk(b"IEND", b""))


MOON = natural_images()["moon"]

# (name, path suffix under /v1/collections/, multipart files, form fields, status, code)
REJECTED = [
    ("no file", "c1/images", {}, {"id": "x"}, 400, "image_missing"),
    ("file under another field name", "c1/images", {"picture": ("a.jpg", MOON)}, {}, 400, "image_missing"),
    ("empty file", "c1/images", {"image": ("a.jpg", b"")}, {}, 400, "image_empty"),
    ("text named .jpg", "c1/images", {"image": ("a.jpg", b"just some text, not a picture")},
     {}, 415, "unsupported_media_type"),
    ("GIF is not accepted", "c1/images", {"image": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")},
     {}, 415, "unsupported_media_type"),
    ("header claims 100000x100000", "c1/images", {"image": ("bomb.png", png_claiming(100_000, 100_000))},
     {}, 422, "image_too_many_pixels"),
    ("header claims 10000x6000", "c1/queries", {"image": ("big.png", png_claiming(10_000, 6_000))},
     {}, 422, "image_too_many_pixels"),
    ("upload over the limit", "c1/images", {"image": ("a.jpg", MOON[:4] + b"\0" * TEST_MAX_UPLOAD_BYTES)},
     {}, 413, "upload_too_large"),
    ("bad collection name", "Bad_Name/images", {"image": ("a.jpg", MOON)}, {}, 400, "invalid_collection_name"),
    ("collection name too long", ("c" * 65) + "/images", {"image": ("a.jpg", MOON)},
     {}, 400, "invalid_collection_name"),
    ("empty id", "c1/images", {"image": ("a.jpg", MOON)}, {"id": ""}, 400, "invalid_image_id"),
    ("id too long", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "x" * 257}, 400, "invalid_image_id"),
    ("id with a control character", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "a\nb"}, 400, "invalid_image_id"),
    ("id with a .. segment", "c1/images", {"image": ("a.jpg", MOON)},
     {"id": "../../etc/passwd"}, 400, "invalid_image_id"),
    ("id with a leading slash", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "/abs"}, 400, "invalid_image_id"),
    ("metadata not JSON", "c1/images", {"image": ("a.jpg", MOON)}, {"metadata": "{nope"}, 400, "invalid_metadata"),
    ("metadata not an object", "c1/images", {"image": ("a.jpg", MOON)},
     {"metadata": "[1, 2]"}, 400, "invalid_metadata"),
    ("metadata too large", "c1/images", {"image": ("a.jpg", MOON)},
     {"metadata": json.dumps({"x": "y" * 20_000})}, 400, "invalid_metadata"),
    ("k = 0", "c1/queries", {"image": ("a.jpg", MOON)}, {"k": "0"}, 400, "invalid_k"),
    ("k = 10^6", "c1/queries", {"image": ("a.jpg", MOON)}, {"k": "1000000"}, 400, "invalid_k"),
    ("k = x", "c1/queries", {"image": ("a.jpg", MOON)}, {"k": "x"}, 400, "invalid_k"),
    ("k = -1", "c1/queries", {"image": ("a.jpg", MOON)}, {"k": "-1"}, 400, "invalid_k"),
]


@pytest.fixture
def unchanged_store(redis_client):
    """Asserts after the test that no record was written and nothing was enqueued."""
    before = store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE), redis_client.llen(QUERY_QUEUE)
    yield
    after = store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE), redis_client.llen(QUERY_QUEUE)
    assert after == before


@pytest.mark.parametrize("name, path, files, form, status, code", REJECTED, ids=[case[0] for case in REJECTED])
def test_rejected_before_enqueueing(api, unchanged_store, name, path, files, form, status, code):
    response = api.http.post(api.url(f"/v1/collections/{path}"), files=files or None, data=form)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("GET", "/v1/tasks/does-not-exist", 404, "task_not_found"),
        ("GET", "/v1/tasks/abc?wait=31", 400, "invalid_wait"),
        ("GET", "/v1/tasks/abc?wait=soon", 400, "invalid_wait"),
        ("GET", "/v1/collections/never-used", 404, "collection_not_found"),
        ("GET", "/v1/collections/BAD", 400, "invalid_collection_name"),
        ("GET", "/v1/collections/c1/images/missing", 404, "image_not_found"),
        ("DELETE", "/v1/collections/c1/images/missing", 404, "image_not_found"),
        ("GET", "/v1/collections/c1/images/a/%2E%2E/b", 400, "invalid_image_id"),
        ("GET", "/v2/anything", 404, "not_found"),
        ("PUT", "/v1/collections/c1/images", 405, "method_not_allowed"),
    ],
)
def test_lookups_and_unknown_routes(api, unchanged_store, method, path, status, code):
    response = api.http.request(method, api.url(path))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if status == 405:  # RFC 9110: a 405 says which methods the resource has
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS, POST"


def test_undecodable_image_fails_its_task_only(api, collection, redis_client):
    before = store_snapshot(redis_client)
    task = api.wait(api.index(collection, png_with_undecodable_pixels(), "broken"))
    assert task["state"] == "failed"
    assert task["error"]["code"] == "image_undecodable"
    assert task["result"] is None
    assert api.http.get(api.url(f"/v1/collections/{collection}/images/broken")).status_code == 404
    # Only the task record was added; no image, vector or leftover upload.
    added = set(store_snapshot(redis_client)) - set(before)
    assert added == {keys.task(task["task_id"]).encode()}
    # The worker is alive and serves the next task.
    assert api.wait(api.index(collection, MOON, "fine"))["state"] == "succeeded"


def nested(depth: int, inner: str = "1") -> str:
    """JSON arrays nested ``depth`` deep around ``inner``."""
    return "[" * depth + inner + "]" * depth


def in_object(depth: int) -> str:
    """A JSON object nested ``depth`` deep in all (the object, then arrays)."""
    return '{"a": ' + nested(depth - 1) + "}"


def vectors_body(**item_fields) -> str:
    item = json.dumps({"id": "a", "vector": [1.0] + [0.0] * 511})[:-1]
    extra = "".join(f', "{name}": {value}' for name, value in item_fields.items())
    return '{"items": [' + item + extra + '}], "model": "m", "weights": "w"}'


JSON_BODY = {"Content-Type": "application/json"}
# (name, method, path under /v1/collections/, requests arguments, status, code): JSON the service cannot carry --
# nested deeper than 32 levels, or with NaN or Infinity -- refused with the field's own 400, never a 500.
JSON_REJECTED = [
    ("vector field 5000 deep", "POST", "c1/queries",
     {"data": {"vector": nested(5000)}}, 400, "invalid_vector"),
    ("metadata 5000 deep", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": in_object(5000)}}, 400, "invalid_metadata"),
    ("metadata 975 deep", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": in_object(975)}}, 400, "invalid_metadata"),
    ("metadata 33 deep", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": in_object(33)}}, 400, "invalid_metadata"),
    ("metadata with NaN", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": '{"x": NaN}'}}, 400, "invalid_metadata"),
    ("metadata with Infinity", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": '{"x": [Infinity]}'}}, 400, "invalid_metadata"),
    ("metadata with -Infinity", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": '{"x": -Infinity}'}}, 400, "invalid_metadata"),
    ("metadata with 1e999", "POST", "c1/images",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": '{"x": 1e999}'}}, 400, "invalid_metadata"),
    ("filter 5000 deep", "POST", "c1/queries",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"filter": in_object(5000)}}, 400, "invalid_filter"),
    ("filter with NaN", "POST", "c1/queries",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"filter": '{"n": NaN}'}}, 400, "invalid_filter"),
    ("allow_collections 5000 deep", "POST", "c1/checks",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"allow_collections": nested(5000, '"x"')}},
     400, "invalid_allow_collections"),
    ("batch ids 5000 deep", "POST", "c1/batches",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"ids": nested(5000, '"x"')}}, 400, "invalid_ids"),
    ("batch metadata 5000 deep", "POST", "c1/batches",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": "[" + in_object(5000) + "]"}}, 400, "invalid_metadata"),
    ("batch metadata item 33 deep", "POST", "c1/batches",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": "[" + in_object(33) + "]"}}, 400, "invalid_metadata"),
    ("batch metadata with Infinity", "POST", "c1/batches",
     {"files": {"image": ("a.jpg", MOON)}, "data": {"metadata": '[{"x": Infinity}]'}}, 400, "invalid_metadata"),
    ("vectors body 5000 deep", "POST", "c1/vectors",
     {"data": nested(5000), "headers": JSON_BODY}, 400, "invalid_json"),
    ("vectors body 5000 deep, idempotent", "POST", "c1/vectors",
     {"data": nested(5000), "headers": JSON_BODY | {"Idempotency-Key": "deep"}}, 400, "invalid_json"),
    ("vector metadata 975 deep", "POST", "c1/vectors",
     {"data": vectors_body(metadata=in_object(975)), "headers": JSON_BODY}, 400, "invalid_json"),
    ("vector metadata 33 deep", "POST", "c1/vectors",
     {"data": vectors_body(metadata=in_object(33)), "headers": JSON_BODY}, 400, "invalid_json"),  # the body: 36 deep
    ("vector metadata with NaN", "POST", "c1/vectors",
     {"data": vectors_body(metadata='{"x": NaN}'), "headers": JSON_BODY}, 400, "invalid_metadata"),
    ("vector metadata with 1e999", "POST", "c1/vectors",
     {"data": vectors_body(metadata='{"x": 1e999}'), "headers": JSON_BODY}, 400, "invalid_metadata"),
    ("settings 5000 deep", "PUT", "c1",
     {"data": in_object(5000), "headers": JSON_BODY}, 400, "invalid_collection_settings"),
]


@pytest.mark.parametrize("name, method, path, arguments, status, code", JSON_REJECTED,
                         ids=[case[0] for case in JSON_REJECTED])
def test_json_too_deep_or_not_finite_is_refused(api, unchanged_store, name, method, path, arguments, status, code):
    response = api.http.request(method, api.url(f"/v1/collections/{path}"), **arguments)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_metadata_may_nest_32_deep_and_no_deeper(api, collection):
    too_deep = api.http.post(api.url(f"/v1/collections/{collection}/images"), files={"image": ("a.jpg", MOON)},
                             data={"id": "deeper", "metadata": in_object(33)})
    assert too_deep.status_code == 400 and too_deep.json()["error"]["code"] == "invalid_metadata"
    metadata = json.loads(in_object(32))
    task = api.wait(api.index(collection, MOON, "deep", metadata=metadata))
    assert task["state"] == "succeeded", task
    stored = api.http.get(api.url(f"/v1/collections/{collection}/images/deep"))
    assert stored.status_code == 200 and json.loads(stored.text)["metadata"] == metadata
    [match] = api.client.query(collection, MOON, k=1)["matches"]
    assert match["metadata"] == metadata

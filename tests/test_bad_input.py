"""Bad requests get a clear 4xx with a stable code and change nothing in the store."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from shared.schemas import INDEX_QUEUE, QUERY_QUEUE
from tests.conftest import TEST_MAX_UPLOAD_BYTES, natural_images, store_snapshot


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims the given size: a decompression bomb's calling card."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


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
    ("text named .jpg", "c1/images", {"image": ("a.jpg", b"just some text, not a picture")}, {}, 415, "unsupported_media_type"),
    ("GIF is not accepted", "c1/images", {"image": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")}, {}, 415, "unsupported_media_type"),
    ("header claims 100000x100000", "c1/images", {"image": ("bomb.png", png_claiming(100_000, 100_000))}, {}, 422, "image_too_many_pixels"),
    ("header claims 10000x6000", "c1/queries", {"image": ("big.png", png_claiming(10_000, 6_000))}, {}, 422, "image_too_many_pixels"),
    ("upload over the limit", "c1/images", {"image": ("a.jpg", MOON[:4] + b"\0" * TEST_MAX_UPLOAD_BYTES)}, {}, 413, "upload_too_large"),
    ("bad collection name", "Bad_Name/images", {"image": ("a.jpg", MOON)}, {}, 400, "invalid_collection_name"),
    ("collection name too long", ("c" * 65) + "/images", {"image": ("a.jpg", MOON)}, {}, 400, "invalid_collection_name"),
    ("empty id", "c1/images", {"image": ("a.jpg", MOON)}, {"id": ""}, 400, "invalid_image_id"),
    ("id too long", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "x" * 257}, 400, "invalid_image_id"),
    ("id with a control character", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "a\nb"}, 400, "invalid_image_id"),
    ("id with a .. segment", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "../../etc/passwd"}, 400, "invalid_image_id"),
    ("id with a leading slash", "c1/images", {"image": ("a.jpg", MOON)}, {"id": "/abs"}, 400, "invalid_image_id"),
    ("metadata not JSON", "c1/images", {"image": ("a.jpg", MOON)}, {"metadata": "{nope"}, 400, "invalid_metadata"),
    ("metadata not an object", "c1/images", {"image": ("a.jpg", MOON)}, {"metadata": "[1, 2]"}, 400, "invalid_metadata"),
    ("metadata too large", "c1/images", {"image": ("a.jpg", MOON)}, {"metadata": json.dumps({"x": "y" * 20_000})}, 400, "invalid_metadata"),
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


def test_undecodable_image_fails_its_task_only(api, collection, redis_client):
    before = store_snapshot(redis_client)
    task = api.wait(api.index(collection, png_with_undecodable_pixels(), "broken"))
    assert task["state"] == "failed"
    assert task["error"]["code"] == "image_undecodable"
    assert task["result"] is None
    assert api.http.get(api.url(f"/v1/collections/{collection}/images/broken")).status_code == 404
    # Only the task record was added; no image, vector or leftover upload.
    added = set(store_snapshot(redis_client)) - set(before)
    assert added == {f"lookalike:task:{task['task_id']}".encode()}
    # The worker is alive and serves the next task.
    assert api.wait(api.index(collection, MOON, "fine"))["state"] == "succeeded"

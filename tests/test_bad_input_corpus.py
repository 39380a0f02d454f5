"""One walk through a corpus of bad requests: each a clear 4xx with its code, no 500, the
worker alive afterwards, the store and the queues unchanged."""

import io
import json

import cv2
import numpy as np
from PIL import Image

from shared.queue import INDEX_QUEUE, QUERY_QUEUE
from tests.conftest import TEST_MAX_UPLOAD_BYTES, natural_images, store_snapshot
from tests.test_bad_input import png_claiming, png_with_corrupt_pixels
from tests.test_end_to_end import ready

PHOTO = natural_images()["chelsea"]
PIXELS = cv2.imdecode(np.frombuffer(PHOTO, np.uint8), cv2.IMREAD_COLOR)


def encoded(extension: str) -> bytes:
    ok, data = cv2.imencode(extension, PIXELS)
    assert ok
    return data.tobytes()


def frames(fmt: str, count: int = 3) -> bytes:
    """An animated or multi-page image with ``count`` frames."""
    pages = [Image.new("RGB", (32, 32), (40 * n, 0, 0)) for n in range(count)]
    buffer = io.BytesIO()
    pages[0].save(buffer, fmt, save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def damaged_header(data: bytes) -> bytes:
    return data[:2] + b"\x00" * 40 + data[42:]


JPEG, PNG, WEBP, TIFF = PHOTO, encoded(".png"), encoded(".webp"), encoded(".tiff")
NOT_UTF8 = b"caf\xe9 \xff\xfe"

# (what, path, multipart files, form fields or raw body, status, code)
CORPUS = [
    ("truncated JPEG", "images", {"image": JPEG[: len(JPEG) // 2]}, {}, 422, "image_undecodable"),
    ("JPEG without its end", "images", {"image": JPEG[:-2]}, {}, 422, "image_undecodable"),
    ("corrupt JPEG header", "images", {"image": damaged_header(JPEG)}, {}, 415, "unsupported_media_type"),
    ("truncated PNG", "images", {"image": PNG[: len(PNG) // 2]}, {}, 422, "image_undecodable"),
    ("PNG with a corrupt chunk", "images", {"image": png_with_corrupt_pixels()}, {}, 422, "image_undecodable"),
    ("corrupt PNG header", "images", {"image": damaged_header(PNG)}, {}, 415, "unsupported_media_type"),
    # A WebP or TIFF by its magic bytes is not "unsupported" when cut short: it is damaged, as docs/api.md says
    # (Pillow cannot even identify them then: its WebP reader needs the whole file, its TIFF reader the end).
    ("truncated WebP", "images", {"image": WEBP[: len(WEBP) // 2]}, {}, 422, "image_undecodable"),
    ("truncated TIFF", "queries", {"image": TIFF[: len(TIFF) // 2]}, {}, 422, "image_undecodable"),
    ("corrupt WebP header", "queries", {"image": damaged_header(WEBP)}, {}, 415, "unsupported_media_type"),
    ("zero bytes", "images", {"image": b""}, {}, 400, "image_empty"),
    ("a text file named .jpg", "images", {"image": b"hello, this is text\n" * 20}, {}, 415, "unsupported_media_type"),
    ("PNG header claiming 100000 x 100000", "images", {"image": png_claiming(100_000, 100_000)}, {}, 422,
     "image_too_many_pixels"),
    ("upload over the size limit", "images", {"image": JPEG[:4] + b"\0" * TEST_MAX_UPLOAD_BYTES}, {}, 413,
     "upload_too_large"),
    ("animated GIF", "images", {"image": frames("GIF")}, {}, 415, "unsupported_media_type"),
    ("multi-page TIFF", "images", {"image": frames("TIFF")}, {}, 422, "multi_frame_image"),
    ("animated WebP", "queries", {"image": frames("WEBP")}, {}, 422, "multi_frame_image"),
    ("wrong field name", "images", {"file": JPEG}, {}, 400, "image_missing"),
    ("no fields at all", "queries", {}, {}, 400, "image_missing"),
    ("malformed metadata", "images", {"image": JPEG}, {"metadata": '{"a": '}, 400, "invalid_metadata"),
    ("metadata not an object", "images", {"image": JPEG}, {"metadata": '"text"'}, 400, "invalid_metadata"),
    ("oversized metadata", "images", {"image": JPEG}, {"metadata": json.dumps({"x": "y" * 40_000})}, 400,
     "invalid_metadata"),
    ("path-traversal id", "images", {"image": JPEG}, {"id": "../../../etc/passwd"}, 400, "invalid_image_id"),
    ("absolute-path id", "images", {"image": JPEG}, {"id": "/etc/passwd"}, 400, "invalid_image_id"),
    ("non-UTF-8 id", "images", {"image": JPEG}, {"id": NOT_UTF8}, 400, "invalid_image_id"),
    ("non-UTF-8 metadata", "images", {"image": JPEG}, {"metadata": b'{"a": "' + NOT_UTF8 + b'"}'}, 400,
     "invalid_metadata"),
    ("k = 0", "queries", {"image": JPEG}, {"k": "0"}, 400, "invalid_k"),
    ("k = 10^6", "queries", {"image": JPEG}, {"k": "1000000"}, 400, "invalid_k"),
    ("k = x", "queries", {"image": JPEG}, {"k": "x"}, 400, "invalid_k"),
    ("k non-UTF-8", "queries", {"image": JPEG}, {"k": NOT_UTF8}, 400, "invalid_k"),
]

# (what, method, full path, status, code)
LOOKUPS = [
    ("path-traversal collection", "POST", "/v1/collections/%2E%2E/images", 400, "invalid_collection_name"),
    ("encoded traversal in an id", "GET", "/v1/collections/c1/images/a/%2E%2E/%2E%2E/etc", 400, "invalid_image_id"),
    ("collection with a slash", "GET", "/v1/collections/a%2Fb", 404, "not_found"),
    ("unknown task id", "GET", "/v1/tasks/00000000000000000000000000000000", 404, "task_not_found"),
    ("task id of garbage", "GET", "/v1/tasks/%FF%FE", 404, "task_not_found"),
    ("unknown batch", "GET", "/v1/batches/nope", 404, "batch_not_found"),
]


def test_the_bad_input_corpus(api, collection, redis_client):
    before = store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE), redis_client.llen(QUERY_QUEUE)
    failures = []
    for what, endpoint, files, form, status, code in CORPUS:
        response = api.http.post(api.url(f"/v1/collections/{collection}/{endpoint}"),
                                 files={name: ("upload.jpg", data) for name, data in files.items()} or None, data=form)
        got = (response.status_code, response.json().get("error", {}).get("code"))
        if got != (status, code):
            failures.append(f"{what}: expected {(status, code)}, got {got}")
    for what, method, path, status, code in LOOKUPS:
        response = api.http.request(method, api.url(path),
                                    files={"image": ("a.jpg", JPEG)} if method == "POST" else None)
        got = (response.status_code, response.json().get("error", {}).get("code"))
        if got != (status, code):
            failures.append(f"{what}: expected {(status, code)}, got {got}")
    assert failures == []
    assert (store_snapshot(redis_client), redis_client.llen(INDEX_QUEUE), redis_client.llen(QUERY_QUEUE)) == before
    # The worker lives on and serves the next image.
    assert api.wait(api.index(collection, JPEG, "after-the-corpus"))["state"] == "succeeded"
    assert ready(api)["status"] == "ready"

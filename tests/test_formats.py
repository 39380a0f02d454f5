"""Every accepted upload format through the real API and worker, and thumbnails without a browser.

The uploads are made here from the committed photographs (tests/data/*.jpg), each in a lossless
encoding, so each decodes to exactly the pixels of its JPEG original: indexed in any format, an
image is found by its JPEG original with score 1.
"""

import io
import uuid

import cv2
import numpy as np
import pytest
from PIL import Image

from shared.settings import Settings
from tests.conftest import natural_images
from tests.test_vectors_and_filters import store_vectors, unit_vectors

# format (as Pillow names it): (photograph, extension, OpenCV encoder parameters, media type)
FORMATS = {
    "PNG": ("astronaut", ".png", [], "image/png"),
    "WEBP": ("camera", ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "image/webp"),  # above 100: lossless
    "BMP": ("coffee", ".bmp", [], "image/bmp"),
    "TIFF": ("chelsea", ".tiff", [], "image/tiff"),
}
PHOTOS = natural_images()
PIXELS = {name: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for name, data in PHOTOS.items()}
THUMBNAIL_SIZE = Settings.model_fields["thumbnail_size"].default  # the test services leave it at its default


def encoded(fmt: str) -> bytes:
    photo, extension, parameters, _ = FORMATS[fmt]
    ok, data = cv2.imencode(extension, PIXELS[photo], parameters)
    assert ok
    data = data.tobytes()
    with Image.open(io.BytesIO(data)) as image:  # what the API will detect
        assert image.format == fmt
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, PIXELS[photo])  # lossless: the JPEG original's pixels
    return data


UPLOADS = {fmt: encoded(fmt) for fmt in FORMATS}


def upload(fmt: str) -> tuple:
    photo, extension, _, media_type = FORMATS[fmt]
    return (f"{photo}{extension}", UPLOADS[fmt], media_type)


@pytest.fixture(scope="module")
def formats_collection(api) -> str:
    """A collection holding each photograph of FORMATS, indexed from its upload in that format as id <format>."""
    collection = f"test-formats-{uuid.uuid4().hex[:8]}"
    submitted = {fmt: api.http.post(api.url(f"/v1/collections/{collection}/images"), files={"image": upload(fmt)},
                                    data={"id": fmt}) for fmt in FORMATS}
    for fmt, response in submitted.items():
        task = api.wait(response, timeout=120)
        assert task["state"] == "succeeded", (fmt, task)
        assert task["result"]["image_id"] == fmt and task["result"]["replaced"] is False
    return collection


def test_png_webp_bmp_and_tiff_uploads_are_indexed_and_found(api, formats_collection):
    assert api.client.collection(formats_collection)["images"] == len(FORMATS)
    queries = {}
    for fmt, (photo, *_) in FORMATS.items():
        queries[(fmt, "jpeg original")] = ("query.jpg", PHOTOS[photo], "image/jpeg")
        queries[(fmt, "same upload")] = upload(fmt)
    submitted = {what: api.http.post(api.url(f"/v1/collections/{formats_collection}/queries"), files={"image": file},
                                     data={"k": str(len(FORMATS))}) for what, file in queries.items()}
    for (fmt, how), response in submitted.items():
        task = api.wait(response, timeout=120)
        assert task["state"] == "succeeded", (fmt, how, task)
        matches = task["result"]["matches"]
        assert len(matches) == len(FORMATS)
        assert matches[0]["id"] == fmt, (how, matches)
        assert matches[0]["score"] == pytest.approx(1.0, abs=1e-4), (how, matches)  # the same pixels, the same vector
        assert all(match["score"] < 0.9999 for match in matches[1:]), (how, matches)


def test_thumbnails_are_small_jpegs_of_the_indexed_image(api, formats_collection):
    for fmt, (photo, *_) in FORMATS.items():
        response = api.http.get(api.url(f"/v1/collections/{formats_collection}/thumbnails/{fmt}"))
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.content[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "JPEG"
        thumbnail = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
        assert thumbnail is not None and thumbnail.size > 0
        height, width = PIXELS[photo].shape[:2]
        scale = THUMBNAIL_SIZE / max(height, width)
        assert thumbnail.shape[:2] == (round(height * scale), round(width * scale))  # longest side 96, same aspect
        assert max(thumbnail.shape[:2]) == THUMBNAIL_SIZE

        # The mean absolute difference from the photograph scaled down alike.
        def distance(name: str, thumbnail=thumbnail) -> float:
            expected = cv2.resize(PIXELS[name], thumbnail.shape[1::-1], interpolation=cv2.INTER_AREA)
            return float(np.abs(expected.astype(np.float32) - thumbnail.astype(np.float32)).mean())

        assert distance(photo) < 10, (fmt, distance(photo))  # only JPEG's rounding between them
        others = [name for name in PIXELS if name != photo]
        assert min(distance(name) for name in others) > 3 * distance(photo), fmt  # a picture of this photograph


def test_thumbnail_not_found(api, formats_collection, collection):
    missing = api.http.get(api.url(f"/v1/collections/{formats_collection}/thumbnails/no-such-image"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "thumbnail_not_found"
    # An image stored as a vector has no pixels, so no thumbnail.
    stored = store_vectors(api, collection, [{"id": "from-a-vector", "vector": unit_vectors(1, seed=60)[0].tolist()}])
    assert stored.status_code == 201, stored.text
    assert api.http.get(api.url(f"/v1/collections/{collection}/images/from-a-vector")).status_code == 200
    vector_only = api.http.get(api.url(f"/v1/collections/{collection}/thumbnails/from-a-vector"))
    assert vector_only.status_code == 404 and vector_only.json()["error"]["code"] == "thumbnail_not_found"

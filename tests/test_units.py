"""Pure functions: validation rules, vector encoding, top-k, and the error catalogue."""

import ast

import numpy as np
import pytest

from shared.errors import CATALOGUE, LookalikeError
from shared.inputs import parse_bounded_int, parse_metadata, validate_collection_name, validate_image_id
from shared.store import decode_vectors, encode_vector
from tests.conftest import REPO
from worker.search import top_k


@pytest.mark.parametrize("image_id", ["a", "uploads/2026/11/cat.jpg", "ID with spaces", "ünïcødé/写真.png", "x" * 256,
                                      "a.b/c..d/...", "50%?#&="])
def test_valid_image_ids(image_id):
    assert validate_image_id(image_id) == image_id


@pytest.mark.parametrize("image_id", ["", "x" * 257, "tab\tin", "new\nline", " lead", "trail ", "/abs", "end/", "a//b",
                                      "./a", "a/../b", "..", "\x00"])
def test_invalid_image_ids(image_id):
    with pytest.raises(LookalikeError) as failure:
        validate_image_id(image_id)
    assert failure.value.code == "invalid_image_id"


@pytest.mark.parametrize("name, ok", [("a", True), ("photos_2026-11", True), ("9lives", True), ("x" * 64, True),
                                      ("", False), ("_a", False), ("-a", False), ("A", False), ("a.b", False),
                                      ("x" * 65, False)])
def test_collection_names(name, ok):
    if ok:
        assert validate_collection_name(name) == name
    else:
        with pytest.raises(LookalikeError):
            validate_collection_name(name)


def test_metadata_parsing():
    assert parse_metadata(None, 100) == {} and parse_metadata("", 100) == {}
    assert parse_metadata('{"tenant": "42", "n": [1, 2]}', 100) == {"tenant": "42", "n": [1, 2]}
    for bad in ("[]", "3", "null", "{", '{"a": 1}' + " " * 100):
        with pytest.raises(LookalikeError):
            parse_metadata(bad, 100)


def test_bounded_int_parsing():
    parse = lambda raw: parse_bounded_int(raw, default=10, low=1, high=1000, code="invalid_k", name="k")  # noqa: E731
    assert parse(None) == 10 and parse("") == 10 and parse("1") == 1 and parse("1000") == 1000 and parse(" 7 ") == 7
    for bad in ("0", "1001", "-1", "1.5", "x", "1e3", "9" * 20):
        with pytest.raises(LookalikeError):
            parse(bad)


def test_vectors_round_trip_as_little_endian_float32():
    vectors = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    blobs = [encode_vector(v) for v in vectors]
    assert all(len(blob) == 2048 for blob in blobs)
    assert blobs[0][:4] == vectors[0, 0].astype("<f4").tobytes()
    np.testing.assert_array_equal(decode_vectors(blobs, 512), vectors)
    assert decode_vectors([], 512).shape == (0, 512)


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((1000, 16)).astype(np.float32)
    query = rng.standard_normal(16).astype(np.float32)
    rows, scores = top_k(matrix, query, 10)
    expected = np.argsort(-(matrix @ query))[:10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, (matrix @ query)[expected])
    assert len(top_k(matrix, query, 5000)[0]) == 1000
    assert len(top_k(matrix[:0], query, 10)[0]) == 0


def test_every_error_code_raised_in_the_code_is_in_the_catalogue():
    used = set()
    for path in [*REPO.glob("api/*.py"), *REPO.glob("worker/*.py"), *REPO.glob("shared/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LookalikeError" and node.args:
                if isinstance(node.args[0], ast.Constant):
                    used.add(node.args[0].value)
    assert used and used <= set(CATALOGUE), sorted(used - set(CATALOGUE))
    with pytest.raises(ValueError):
        LookalikeError("no_such_code", "x")


def test_api_never_imports_tensorflow():
    import subprocess
    import sys

    code = "import sys, api.wsgi; sys.exit(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_a_blank_webhook_secret_means_none():
    from shared.settings import Settings

    assert Settings(webhook_secret="").webhook_secret is None
    assert Settings(webhook_secret="  ").webhook_secret is None
    assert Settings(webhook_secret="k").webhook_secret.get_secret_value() == "k"


def test_threshold_proposal_reaches_the_precision_with_the_most_recall():
    from shared.calibration import precision_recall_curve, propose_threshold

    scores = [0.99, 0.97, 0.95, 0.93, 0.90, 0.88, 0.85, 0.80]
    same = [True, True, True, False, True, True, False, False]
    assert propose_threshold(scores, same, 1.0) == {"threshold": 0.95, "precision": 1.0, "recall": 0.6}
    assert propose_threshold(scores, same, 0.8) == {"threshold": 0.88, "precision": 0.8333, "recall": 1.0}
    assert propose_threshold([0.5, 0.4], [False, True], 0.9) is None
    assert propose_threshold([0.9, 0.9, 0.8], [True, False, True], 0.6) == {"threshold": 0.8, "precision": 0.6667,
                                                                              "recall": 1.0}  # ties go together
    curve = precision_recall_curve(scores, same, points=3)
    assert [point["threshold"] for point in curve] == [0.99, 0.9, 0.8] and curve[-1]["recall"] == 1.0
    assert propose_threshold(scores, same, 1.0, positives=10)["recall"] == 0.3  # recall against all true pairs


def test_pooled_descriptors():
    import numpy as np

    from worker import descriptors

    maps = np.zeros((1, 4, 4, 3), np.float32)
    maps[0, 0, 0] = [8, 0, 0]  # one strong activation of channel 0
    maps[0, :, :, 1] = 1  # channel 1 everywhere
    np.testing.assert_allclose(descriptors.mac(maps), [[8 / np.sqrt(65), 1 / np.sqrt(65), 0]], rtol=1e-5)
    np.testing.assert_allclose(descriptors.spoc(maps), [[0.5 / np.sqrt(1.25), 1 / np.sqrt(1.25), 0]], rtol=1e-5)
    gem = descriptors.gem(maps)[0]
    assert descriptors.spoc(maps)[0][0] < gem[0] < descriptors.mac(maps)[0][0]  # between average and max
    regions = descriptors.rmac_regions(7, 7)
    assert (0, 0, 7, 7) in [(top, left, s, s2) for top, left, s, s2 in regions] or regions[0][2] == 4
    assert all(0 <= top and 0 <= left and top + s <= 7 and left + s2 <= 7 for top, left, s, s2 in regions)
    assert len(regions) > 3
    for pooled in (descriptors.rmac(maps), descriptors.gem(maps)):
        assert np.isclose(np.linalg.norm(pooled), 1.0)


def test_whitening_and_query_expansion():
    import numpy as np

    from worker import descriptors

    rng = np.random.default_rng(0)
    vectors = descriptors.l2_normalise(rng.standard_normal((200, 8)) * [10, 1, 1, 1, 1, 1, 1, 1])
    whitening = descriptors.Whitening.learn(vectors, shrinkage=0)  # plain PCA-whitening
    whitened = whitening.apply(vectors)
    assert whitened.shape == (200, 8) and np.allclose(np.linalg.norm(whitened, axis=1), 1, atol=1e-5)
    projected = (vectors - whitening.mean) @ whitening.projection  # before the final normalisation
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(8), atol=1e-3)  # decorrelated, unit variance
    # From fewer vectors than dimensions, only the n - 1 directions they vary along are kept.
    few = descriptors.Whitening.learn(vectors[:5])
    assert few.dimension == 4
    assert descriptors.Whitening.learn(vectors, dimensions=3).dimension == 3
    # Shrinkage leaves strong components nearly whitened and damps weak ones: variances shrink towards 0.
    shrunk = descriptors.Whitening.learn(vectors, shrinkage=1.0)
    variances = np.var((vectors - shrunk.mean) @ shrunk.projection, axis=0, ddof=1)
    assert np.all(variances < 1) and variances[0] > variances[-1]
    queries = vectors[:2] + 0.01
    expanded = descriptors.expand_queries(descriptors.l2_normalise(queries), vectors, top=1)
    assert (expanded @ vectors[:2].T).diagonal().min() > 0.99


@pytest.mark.parametrize("megapixels", [1, 2, 4])
def test_decoding_a_phone_sized_jpeg_with_a_bilinear_final_shrink_keeps_hashes_and_pixels(megapixels):
    """decode_image shrinks what the JPEG decoder's own scaling leaves (between 1x and 2x the kept size) bilinearly,
    not by area (9x cheaper there, issue 17): the PDQ hash stays within a few bits of an area-shrunk decode and
    the pixels within a few levels."""
    import cv2

    from shared.images import DECODED_MAX_SIDE, decode_image
    from worker.pdq import compute_pdq

    photo = cv2.imread(str(REPO / "tests" / "data" / "chelsea.jpg"))
    scale = (megapixels * 1e6 / (photo.shape[0] * photo.shape[1])) ** 0.5
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    jpeg = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    decoded = decode_image(jpeg)
    assert max(decoded.shape[:2]) == DECODED_MAX_SIDE
    reduced = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    by_area = cv2.resize(reduced, decoded.shape[1::-1], interpolation=cv2.INTER_AREA)
    hashes = compute_pdq(decoded).bits, compute_pdq(by_area).bits
    assert int(np.bitwise_count(np.frombuffer(hashes[0], np.uint8) ^ np.frombuffer(hashes[1], np.uint8)).sum()) <= 4
    assert np.abs(decoded.astype(np.int16) - by_area.astype(np.int16)).mean() < 3


def test_shrink_is_bilinear_above_half_size_and_by_area_below():
    import cv2

    from shared.images import shrink

    image = np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    assert np.array_equal(shrink(image, 512), cv2.resize(image, (512, 384), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(shrink(image, 200), cv2.resize(image, (200, 150), interpolation=cv2.INTER_AREA))
    assert shrink(image, 900) is image


def test_celery_task_events_follow_their_setting():
    from shared.queue import make_celery
    from shared.settings import Settings

    on, off = make_celery(Settings()), make_celery(Settings(task_events=False))
    assert (on.conf.worker_send_task_events, on.conf.task_send_sent_event) == (True, True)  # Flower's task views
    assert (off.conf.worker_send_task_events, off.conf.task_send_sent_event) == (False, False)

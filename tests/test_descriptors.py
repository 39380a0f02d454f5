"""The worker's descriptor options (LOOKALIKE_POOLING, LOOKALIKE_INPUT_MODE, LOOKALIKE_SCALES) compute what
bench/quality.py measured."""

import keras
import numpy as np
import pytest

from shared.images import decode_image
from tests.conftest import natural_images
from worker import descriptors
from worker.extractor import CELL, INPUT_SIZE, FeatureExtractor, model_name, pad_to_square
from worker.weights import resolve_weights

WEIGHTS = resolve_weights("random", seed=4)


@pytest.fixture(scope="module")
def images():
    photos = natural_images()
    return [decode_image(photos[name]) for name in ("page", "rocket", "camera")]  # wide, landscape, square


def test_mac_on_squashed_input_is_what_keras_max_pooling_gives(images):
    """The default before the pooling options: the same vectors as VGG16(pooling="max"), so old collections match."""
    extractor = FeatureExtractor(WEIGHTS, seed=4)
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="max")
    reference.set_weights(extractor.model.get_weights())
    pooled = reference(np.stack([extractor.preprocess(image) for image in images]), training=False).numpy()
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(extractor.extract(images), expected, atol=1e-5)
    assert extractor.descriptor.model == "vgg16-notop-maxpool-224" == model_name("mac", "squash")


@pytest.mark.parametrize("pooling", descriptors.POOLINGS)
def test_padded_input_pools_only_the_cells_the_image_covers(images, pooling):
    extractor = FeatureExtractor(WEIGHTS, seed=4, pooling=pooling, input_mode="pad")
    assert extractor.descriptor.model == model_name(pooling, "pad")
    vectors = extractor.extract(images)
    for image, vector in zip(images, vectors):
        model_input, (rows, cols) = pad_to_square(image, keras.applications.vgg16.preprocess_input)
        height, width = image.shape[:2]
        scale = INPUT_SIZE / max(height, width)
        assert (rows, cols) == (-(-round(height * scale) // CELL), -(-round(width * scale) // CELL))
        assert not model_input[rows * CELL:, :, :].any() and not model_input[:, cols * CELL:, :].any()  # padding
        maps = extractor.feature_maps(model_input[None])[:, :rows, :cols]
        np.testing.assert_allclose(vector, descriptors.pool(maps, pooling)[0], atol=1e-5)
        assert np.isclose(np.linalg.norm(vector), 1.0)
    wide = extractor.prepare(images[0])[1]
    assert wide[0] < wide[1] == 7  # the wide page covers all columns and only some rows


@pytest.mark.parametrize("input_mode", ["pad", "squash"])
def test_two_scales_sum_the_descriptors_of_a_pass_at_each(images, input_mode):
    extractor = FeatureExtractor(WEIGHTS, seed=4, pooling="rmac", input_mode=input_mode, scales=(224, 160))
    assert extractor.descriptor.model == model_name("rmac", input_mode, (224, 160))
    assert extractor.descriptor.model.endswith(("-pad224+160", "-224+160"))
    vectors = extractor.extract(images)
    for image, vector in zip(images, vectors):
        pooled = []
        for scale in (224, 160):
            model_input, (rows, cols) = extractor.prepare(image, scale)
            assert max(rows, cols) == -(-scale // CELL)  # the longest side is `scale`, on the 224 canvas
            assert not model_input[-(-scale // CELL) * CELL:].any()
            pooled.append(descriptors.pool(extractor.feature_maps(model_input[None])[:, :rows, :cols], "rmac")[0])
        np.testing.assert_allclose(vector, descriptors.l2_normalise(pooled[0] + pooled[1]), atol=1e-5)
    single = FeatureExtractor(WEIGHTS, seed=4, pooling="rmac", input_mode=input_mode).extract(images)
    assert not np.allclose(single, vectors, atol=1e-3)  # the second scale changes the vector


def test_scales_setting_reads_a_comma_separated_list(monkeypatch):
    from pydantic import ValidationError

    from shared.settings import Settings

    monkeypatch.setenv("LOOKALIKE_SCALES", "224, 160")
    assert Settings().scales == (224, 160)
    for bad in ("300", "16", "224,224", ""):
        monkeypatch.setenv("LOOKALIKE_SCALES", bad)
        with pytest.raises(ValidationError):
            Settings()

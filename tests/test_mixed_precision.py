"""Mixed precision (float16 compute) keeps vectors within cosine 0.999 of float32 ones."""

import numpy as np

from shared.images import decode_image
from tests.conftest import natural_images
from worker.extractor import FeatureExtractor
from worker.weights import resolve_weights


def test_mixed_precision_vectors_match_float32_vectors():
    images = [decode_image(data) for data in natural_images().values()]
    weights = resolve_weights("random", seed=3)
    full = FeatureExtractor(weights, seed=3).extract(images)
    half = FeatureExtractor(weights, seed=3, mixed_precision=True)
    assert half.model.layers[1].compute_dtype == "float16"
    mixed = half.extract(images)
    assert mixed.dtype == np.float32
    cosines = np.sum(full * mixed, axis=1)
    assert cosines.min() >= 0.999, cosines

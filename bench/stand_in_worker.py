"""The worker with its forward pass replaced by a stand-in that costs (almost) nothing -- for bench/pipeline.py
only, to measure what everything but the model costs. It lives in bench/, which no image ships and no setting
reaches: it cannot be switched on in a deployment.

    python bench/stand_in_worker.py [python -m worker's arguments]

The stand-in answers each batch with random feature maps of the model's shape (so pooling, normalising and
storing run as they do); everything else -- Celery, decoding, preprocessing, PDQ, thumbnails, Redis -- is the
real worker's.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker import extractor  # noqa: E402
from worker.__main__ import main  # noqa: E402

FEATURE_MAP = (7, 7, 512)  # VGG16's last convolutional block at 224x224
_random = np.random.default_rng(0)


def stand_in_feature_maps(self, batch: np.ndarray) -> np.ndarray:
    return _random.standard_normal((len(batch), *FEATURE_MAP)).astype(np.float32)


extractor.FeatureExtractor.feature_maps = stand_in_feature_maps  # before the worker builds its extractor

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

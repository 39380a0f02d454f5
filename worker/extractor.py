"""VGG16 feature extraction: decoded pixels in, L2-normalised 512-d float32 vectors out."""

import logging

import cv2
import numpy as np

from shared.schemas import VECTOR_DIMENSION
from shared.store import Descriptor
from worker.batcher import INDEX_PRIORITY, DynamicBatcher
from worker.weights import WeightsSource

log = logging.getLogger(__name__)

INPUT_SIZE = 224
DIMENSION = VECTOR_DIMENSION
# Max pooling of the last conv block (MAC, Tolias et al. 2016): a 512-d global descriptor
# that keeps the strongest response of every filter.
POOLING = "max"
MODEL_NAME = f"vgg16-notop-{POOLING}pool-{INPUT_SIZE}"


def resize_for_model(pixels_bgr: np.ndarray) -> np.ndarray:
    """Squash to 224x224, with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    height, width = pixels_bgr.shape[:2]
    shrinking = height * width > INPUT_SIZE * INPUT_SIZE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)


def enable_gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it instead of all at once."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU was initialised already (a second extractor in one process)
            pass


class FeatureExtractor:
    """One VGG16 graph for the life of the process, fed by a dynamic batcher; thread-safe."""

    def __init__(
        self,
        weights: WeightsSource,
        seed: int = 0,
        *,
        max_batch: int = 32,
        batch_wait_seconds: float = 0.005,
        mixed_precision: bool = False,
    ):
        import keras
        import tensorflow as tf

        enable_gpu_memory_growth()
        self.weights = weights
        self.mixed_precision = mixed_precision
        if weights.is_random:
            keras.utils.set_random_seed(seed)
        previous_policy = keras.mixed_precision.global_policy()
        # float16 compute with float32 variables (so float32 weight files load as they are).
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
        try:
            self.model = keras.applications.VGG16(
                include_top=False, weights=None, input_shape=(INPUT_SIZE, INPUT_SIZE, 3), pooling=POOLING
            )
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        if weights.path is not None:
            self.model.load_weights(str(weights.path))
        self._preprocess_input = keras.applications.vgg16.preprocess_input
        # Called directly in a traced graph: model.predict's per-call set-up dominates small
        # batches. One signature with a free batch axis, so a new batch size never retraces.
        self._forward = tf.function(
            lambda batch: tf.cast(self.model(batch, training=False), tf.float32),
            input_signature=[tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 3), tf.float32)],
        )
        self.batcher = DynamicBatcher(self.forward, max_batch, batch_wait_seconds)
        self.descriptor = Descriptor(model=MODEL_NAME, dimension=DIMENSION, weights=weights.label)

    def preprocess(self, pixels_bgr: np.ndarray) -> np.ndarray:
        """Decoded BGR uint8 pixels -> the float32 input Keras' VGG16 expects (BGR, ImageNet means subtracted)."""
        rgb = resize_for_model(pixels_bgr)[..., ::-1].astype(np.float32)
        return self._preprocess_input(rgb)  # flips RGB to BGR and subtracts the ImageNet means; no /255

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass over preprocessed inputs -> unit vectors. Only the batcher's thread calls it."""
        return l2_normalise(self._forward(batch).numpy())

    def extract(self, images_bgr: list[np.ndarray], priority: int = INDEX_PRIORITY) -> np.ndarray:
        """An (n, 512) float32 matrix of unit vectors, one row per image; passes shared with other callers."""
        return self.batcher.run_all([self.preprocess(pixels) for pixels in images_bgr], priority)


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # An all-zero feature map (possible with random weights) stays zero instead of NaN.
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)

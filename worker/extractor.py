"""VGG16 feature extraction: decoded pixels in, L2-normalised 512-d float32 vectors out.

The model runs on whichever Keras 3 backend ``KERAS_BACKEND`` names -- TensorFlow by default, JAX or
PyTorch -- each compiled its own way (worker.keras_backend); the same weights give the same vectors
on each, to float tolerance.

The descriptor is chosen by three settings (docs/quality.md has the measurements behind the
defaults): ``LOOKALIKE_INPUT_MODE`` -- ``squash`` the image to a square, or ``pad``: keep its
aspect ratio and pad the rest with the mean colour, pooling only the cells the image covers
--, ``LOOKALIKE_POOLING`` of the last conv block (worker.descriptors), and
``LOOKALIKE_SCALES``: the image's longest side in each forward pass (several: their
descriptors are summed). Every input is laid on the same 224x224 canvas, so forward passes
of any image at any scale batch together.
"""

import logging
import time

import cv2
import numpy as np

from shared.store import Descriptor
from shared.vectors import VECTOR_DIMENSION
from worker import descriptors
from worker.batcher import INDEX_PRIORITY, DynamicBatcher
from worker.keras_backend import backend, compiled_forward, enable_gpu_memory_growth
from worker.weights import WeightsSource

log = logging.getLogger(__name__)

INPUT_SIZE = 224
CELL = 32  # VGG16's five poolings: one feature-map cell per 32x32 input pixels
DIMENSION = VECTOR_DIMENSION
POOLING_LABELS = {"mac": "maxpool", "spoc": "avgpool", "gem": "gem3", "rmac": "rmac3"}


def model_name(pooling: str, input_mode: str, scales: tuple[int, ...] = (INPUT_SIZE,)) -> str:
    """The descriptor's label, stored with every collection: vectors of different labels never mix."""
    sizes = "+".join(str(scale) for scale in scales)
    return f"vgg16-notop-{POOLING_LABELS[pooling]}-{'pad' if input_mode == 'pad' else ''}{sizes}"


def _resize(pixels_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(width, height)``: area averaging when shrinking (no aliasing), bilinear when enlarging."""
    shrinking = size[0] * size[1] < pixels_bgr.shape[0] * pixels_bgr.shape[1]
    return cv2.resize(pixels_bgr, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _on_canvas(resized_bgr: np.ndarray, preprocess) -> tuple[np.ndarray, tuple[int, int]]:
    """The preprocessed image at the top left of a 224x224 canvas of zeros -- the mean colour after
    preprocessing -- with the (rows, cols) of feature-map cells it covers."""
    height, width = resized_bgr.shape[:2]
    canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    canvas[:height, :width] = preprocess(resized_bgr[..., ::-1].astype(np.float32))
    return canvas, (-(-height // CELL), -(-width // CELL))


def squash(pixels_bgr: np.ndarray, preprocess, side: int = INPUT_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Squashed to side x side (the aspect ratio lost), preprocessed, on the canvas."""
    return _on_canvas(_resize(pixels_bgr, (side, side)), preprocess)


def pad_to_square(pixels_bgr: np.ndarray, preprocess, longest: int = INPUT_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Aspect kept with the longest side ``longest`` (no side under one cell), preprocessed, on the canvas."""
    height, width = pixels_bgr.shape[:2]
    scale = longest / max(height, width)
    size = (max(CELL, min(longest, round(width * scale))), max(CELL, min(longest, round(height * scale))))
    return _on_canvas(_resize(pixels_bgr, size), preprocess)


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
        pooling: str = "mac",
        input_mode: str = "squash",
        scales: tuple[int, ...] = (INPUT_SIZE,),
    ):
        import keras

        enable_gpu_memory_growth()
        self.backend = backend()
        self.weights = weights
        self.mixed_precision = mixed_precision
        self.pooling, self.input_mode, self.scales = pooling, input_mode, tuple(scales)
        if weights.is_random:
            keras.utils.set_random_seed(seed)
        previous_policy = keras.mixed_precision.global_policy()
        # float16 compute with float32 variables (so float32 weight files load as they are).
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
        try:
            # No pooling layer: the feature maps come out, pooled by worker.descriptors.
            self.model = keras.applications.VGG16(include_top=False, weights=None,
                                                  input_shape=(INPUT_SIZE, INPUT_SIZE, 3))
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        if weights.path is not None:
            self.model.load_weights(str(weights.path))
        self._preprocess_input = keras.applications.vgg16.preprocess_input
        # Called directly, compiled by the backend: model.predict's per-call set-up dominates small batches.
        self._forward = compiled_forward(self.model, (INPUT_SIZE, INPUT_SIZE, 3))
        self.batcher = DynamicBatcher(self.feature_maps, max_batch, batch_wait_seconds)
        self.descriptor = Descriptor(model=model_name(pooling, input_mode, self.scales), dimension=DIMENSION,
                                     weights=weights.label)

    def warm_up(self) -> dict[int, float]:
        """One pass of zeros at each batch size the batcher sends -> seconds each took (the first pass of a
        shape includes compiling it). Outside the batcher: these passes are not counted as served."""
        seconds = {}
        for size in self.batcher.sizes:
            started = time.perf_counter()
            self.feature_maps(np.zeros((size, INPUT_SIZE, INPUT_SIZE, 3), np.float32))
            seconds[size] = round(time.perf_counter() - started, 3)
        return seconds

    def prepare(self, pixels_bgr: np.ndarray, scale: int = INPUT_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
        """Decoded BGR uint8 pixels -> the float32 input Keras' VGG16 expects (BGR, ImageNet means
        subtracted; no /255) at one scale, and the (rows, cols) of feature-map cells that show the image."""
        if self.input_mode == "pad":
            return pad_to_square(pixels_bgr, self._preprocess_input, scale)
        return squash(pixels_bgr, self._preprocess_input, scale)

    def preprocess(self, pixels_bgr: np.ndarray) -> np.ndarray:
        return self.prepare(pixels_bgr)[0]

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass -> (n, 7, 7, 512) feature maps. Only the batcher's thread calls it."""
        return self._forward(batch)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass over preprocessed, unpadded inputs -> unit vectors (benchmarks, tests)."""
        return descriptors.pool(self.feature_maps(batch), self.pooling)

    def extract(self, images_bgr: list[np.ndarray], priority: int = INDEX_PRIORITY) -> np.ndarray:
        """An (n, 512) float32 matrix of unit vectors, one row per image; passes shared with other callers.

        With several scales each image takes a pass per scale; its pooled descriptors are
        summed and normalised again (multi-scale pooling, Tolias et al. 2016).
        """
        prepared = [self.prepare(pixels, scale) for pixels in images_bgr for scale in self.scales]
        maps = self.batcher.run_all([model_input for model_input, _ in prepared], priority)
        pooled = np.concatenate([descriptors.pool(m[None, :rows, :cols], self.pooling)
                                 for m, (_, (rows, cols)) in zip(maps, prepared)])
        if len(self.scales) == 1:
            return pooled
        return descriptors.l2_normalise(pooled.reshape(len(images_bgr), len(self.scales), -1).sum(axis=1))

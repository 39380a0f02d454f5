"""Global descriptors pooled from a convolutional feature map, and what can follow them.

All functions take VGG16's last conv block as an (n, height, width, channels) float array
(ReLU outputs, so non-negative) and return (n, channels) unit vectors:

- MAC (max pooling; Tolias et al. 2016): the strongest response of every filter.
- SPoC (sum/average pooling; Babenko & Lempitsky 2015).
- GeM (generalised mean, p = 3; Radenović et al. 2018): between the two.
- R-MAC (regional MAC; Tolias et al. 2016): MACs of square regions at 3 scales, each
  normalised, summed, normalised: more weight to objects than to background.

PCA-whitening (Jégou & Chum 2012) is learned from a collection's own vectors; query
expansion (average QE, Chum et al. 2007) averages a query with its top matches.
bench/quality.py compares them; docs/quality.md has the numbers.
"""

import numpy as np

POOLINGS = ("mac", "spoc", "gem", "rmac")
GEM_P = 3.0
RMAC_LEVELS = 3
# Regularised whitening: each component's variance plus this share of the mean variance
# (bench/quality.py: 0.1 to 1.0 all within a point; none, 3 points worse).
WHITENING_SHRINKAGE = 0.3


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def mac(maps: np.ndarray) -> np.ndarray:
    return l2_normalise(maps.max(axis=(1, 2)))


def spoc(maps: np.ndarray) -> np.ndarray:
    return l2_normalise(maps.mean(axis=(1, 2)))


def gem(maps: np.ndarray, p: float = GEM_P) -> np.ndarray:
    clipped = np.maximum(maps, 1e-6).astype(np.float64)
    return l2_normalise((clipped**p).mean(axis=(1, 2)) ** (1.0 / p))


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int, int]]:
    """Square regions ``(top, left, size, size)`` at ``levels`` scales, about 40% overlap (Tolias et al.)."""
    regions = []
    short = min(height, width)
    for level in range(1, levels + 1):
        size = max(1, int(2 * short / (level + 1)))
        # as many regions along each side as give consecutive overlap closest to 40%
        count_h = 1 if height == size else max(1, round((height - size) / (size * 0.6)) + 1)
        count_w = 1 if width == size else max(1, round((width - size) / (size * 0.6)) + 1)
        tops = np.linspace(0, height - size, count_h).round().astype(int) if count_h > 1 else [(height - size) // 2]
        lefts = np.linspace(0, width - size, count_w).round().astype(int) if count_w > 1 else [(width - size) // 2]
        regions += [(int(top), int(left), size, size) for top in tops for left in lefts]
    return regions


def rmac(maps: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    _, height, width, _ = maps.shape
    total = np.zeros((maps.shape[0], maps.shape[3]), dtype=np.float64)
    for top, left, size_h, size_w in rmac_regions(height, width, levels):
        total += l2_normalise(maps[:, top:top + size_h, left:left + size_w, :].max(axis=(1, 2)))
    return l2_normalise(total)


POOL = {"mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac}


def pool(maps: np.ndarray, pooling: str) -> np.ndarray:
    return POOL[pooling](maps)


class Whitening:
    """PCA-whitening: centre, rotate onto the principal axes, scale each to unit variance, normalise.

    Learned from a sample of a collection's own unit vectors (:meth:`learn`); the result is
    normalised again, so cosine similarity stays the measure -- in the whitened space.
    """

    def __init__(self, mean: np.ndarray, projection: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.projection = np.asarray(projection, dtype=np.float32)  # (input dimension, kept components)

    @property
    def dimension(self) -> int:
        return self.projection.shape[1]

    @classmethod
    def learn(cls, vectors: np.ndarray, dimensions: int | None = None, shrinkage: float = WHITENING_SHRINKAGE,
              relative_floor: float = 1e-5) -> "Whitening":
        """Learn from ``vectors`` (n, d), keeping at most ``dimensions`` components.

        Only components the sample shows variance along are kept (at most n - 1, and none
        under ``relative_floor`` of the largest): from fewer images than dimensions most
        directions never vary. ``shrinkage`` adds that share of the mean variance to each
        before scaling, so weak, noisy components are not blown up to full weight
        (regularised whitening; bench/quality.py measured it).
        """
        if vectors.shape[0] < 2:
            raise ValueError("whitening needs at least two vectors")
        mean = vectors.mean(axis=0, dtype=np.float64)
        covariance = np.cov(vectors - mean, rowvar=False)
        values, axes = np.linalg.eigh(covariance)
        order = np.argsort(values)[::-1]
        values, axes = values[order], axes[:, order]
        keep = int(np.sum(values > values[0] * relative_floor))
        keep = min(keep, vectors.shape[0] - 1, dimensions or vectors.shape[1])
        scales = np.sqrt(values[:keep] + shrinkage * values[:keep].mean())
        return cls(mean, axes[:, :keep] / scales)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalise((vectors - self.mean) @ self.projection)


def expand_queries(queries: np.ndarray, database: np.ndarray, top: int = 1) -> np.ndarray:
    """Average query expansion: each query averaged with its ``top`` best database matches."""
    scores = queries @ database.T
    best = np.argsort(-scores, axis=1)[:, :top]
    return l2_normalise(queries + database[best].sum(axis=1))

"""Exact nearest-neighbour search over unit vectors: cosine similarity is a dot product."""

import numpy as np


def top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the ``k`` best-scoring rows of ``matrix`` for ``query``, and their scores.

    One BLAS matrix-vector product and a partial sort: O(n) to select, O(k log k) to order.
    """
    if matrix.shape[0] == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = matrix @ query
    if k < scores.shape[0]:
        best = np.argpartition(scores, scores.shape[0] - k)[-k:]
    else:
        best = np.arange(scores.shape[0])
    best = best[np.argsort(-scores[best], kind="stable")]
    return best, scores[best]

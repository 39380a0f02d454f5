"""Exact search over rows kept by id: unit vectors (cosine is a dot product), or PDQ hashes."""

import numpy as np


class RowsById:
    """One contiguous matrix with a row per id, and the id of each row.

    Appends grow the matrix by half again (amortised O(1)); a delete moves the last row
    into the hole, so the live rows are always ``matrix[:len]`` and a scan is one array op.
    """

    def __init__(self, width: int, dtype, capacity: int = 0):
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self._matrix = np.empty((capacity, width), dtype=dtype)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix[: len(self.ids)]

    def row_of(self, key: str) -> np.ndarray | None:
        row = self.rows.get(key)
        return None if row is None else self._matrix[row]

    def put(self, key: str, values: np.ndarray) -> None:
        row = self.rows.get(key)
        if row is None:
            row = len(self.ids)
            if row == self._matrix.shape[0]:
                grown = np.empty((max(16, row + row // 2), self._matrix.shape[1]), dtype=self._matrix.dtype)
                grown[:row] = self._matrix[:row]
                self._matrix = grown
            self.ids.append(key)
            self.rows[key] = row
        self._matrix[row] = values

    def delete(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = len(self.ids) - 1
        if row != last:
            moved = self.ids[last]
            self._matrix[row] = self._matrix[last]
            self.ids[row] = moved
            self.rows[moved] = row
        self.ids.pop()


# float32 products differ in their last bit with a row's place in the matrix (BLAS kernels take rows in blocks):
# rows this close to the k-th score are returned too, so that exact scoring (exact_scores) decides the order.
NEAR_TIE = 1e-5


def top_k(matrix: np.ndarray, query: np.ndarray, k: int, near_ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the ``k`` best-scoring rows of ``matrix`` for ``query``, and their scores, best first;
    with ``near_ties``, also every row within NEAR_TIE of the k-th score.

    One BLAS matrix-vector product and a partial sort: O(n) to select, O(k log k) to order.
    """
    if matrix.shape[0] == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = matrix @ query
    if k < scores.shape[0]:
        best = np.argpartition(scores, scores.shape[0] - k)[-k:]
        if near_ties:
            best = np.flatnonzero(scores >= scores[best].min() - NEAR_TIE)
    else:
        best = np.arange(scores.shape[0])
    best = best[np.argsort(-scores[best], kind="stable")]
    return best, scores[best]


# Past this many near-ties beyond k (near-identical images by the thousand: a meme in a block list), the exact
# order is settled here, in numpy and in chunks, rather than by scoring each candidate again one by one.
NEAR_TIE_CAP = 256


def settle_near_ties(matrix: np.ndarray, rows: np.ndarray, keys: list[str], query: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` of ``rows`` best by exact score (exact_scores), ties by key -- with their float32 scores."""
    exact = np.concatenate([exact_scores(matrix[rows[start:start + 4096]], query)
                            for start in range(0, len(rows), 4096)])
    order = np.lexsort((np.array(keys), -exact))[:k]
    return rows[order], (matrix[rows[order]] @ query).astype(np.float32)


def exact_scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine scores computed in float64, one vector at a time: the same for a vector wherever it is stored, so
    that rankings merged from several parts equal one search over all (float32 BLAS products are not)."""
    return np.asarray(vectors, dtype=np.float64) @ np.asarray(query, dtype=np.float64)

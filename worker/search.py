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

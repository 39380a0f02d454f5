"""In-memory replicas of collections, kept fresh from Redis incrementally.

A query worker loads a collection's vectors once, then before every search applies the
collection's change events (puts and deletes, from a Redis Stream written atomically with
each change) since the position it holds. A query therefore sees every write that
finished before it started, at the cost of one round trip when nothing has changed.
If the replica fell so far behind that the stream was trimmed past it, it reloads in full.
"""

import logging
import threading
from typing import NamedTuple

import numpy as np

from shared.store import Store
from worker.search import top_k

log = logging.getLogger(__name__)

CHANGES_PER_READ = 10_000


class SearchResult(NamedTuple):
    matches: list[tuple[str, float]]  # (id, score), best first
    searched: int  # how many vectors the collection held


class CollectionReplica:
    """One collection's vectors as a contiguous matrix (one copy per vector) and its ids."""

    def __init__(self, dimension: int, ids: list[str], vectors: np.ndarray, seq: int, stream_id: str):
        self.dimension = dimension
        self.ids = list(ids)
        self.rows = {image_id: row for row, image_id in enumerate(self.ids)}
        self._matrix = np.array(vectors, dtype=np.float32, copy=True).reshape(len(self.ids), dimension)
        self.seq = seq
        self.stream_id = stream_id

    @property
    def vectors(self) -> np.ndarray:
        return self._matrix[: len(self.ids)]

    def put(self, image_id: str, vector: np.ndarray) -> None:
        row = self.rows.get(image_id)
        if row is None:
            row = len(self.ids)
            if row == self._matrix.shape[0]:  # grow by half again: amortised O(1) appends
                grown = np.empty((max(16, row + row // 2), self.dimension), dtype=np.float32)
                grown[:row] = self._matrix[:row]
                self._matrix = grown
            self.ids.append(image_id)
            self.rows[image_id] = row
        self._matrix[row] = vector

    def delete(self, image_id: str) -> None:
        row = self.rows.pop(image_id, None)
        if row is None:
            return
        last = len(self.ids) - 1
        if row != last:  # move the last vector into the hole: rows stay contiguous
            moved = self.ids[last]
            self._matrix[row] = self._matrix[last]
            self.ids[row] = moved
            self.rows[moved] = row
        self.ids.pop()


class Replicas:
    """Every collection this worker has searched, each refreshed before each search."""

    def __init__(self, store: Store, dimension: int):
        self.store = store
        self.dimension = dimension
        self._replicas: dict[str, CollectionReplica] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def search(self, collection: str, query: np.ndarray, k: int, min_score: float | None = None) -> "SearchResult":
        """The ``k`` most similar ids with their scores (at least ``min_score``), over the collection as it is now."""
        with self._lock(collection):
            replica = self._refresh(collection)
            rows, scores = top_k(replica.vectors, query, k)
            if min_score is not None:
                keep = scores >= min_score
                rows, scores = rows[keep], scores[keep]
            return SearchResult([(replica.ids[row], float(score)) for row, score in zip(rows, scores)], len(replica.ids))

    def _lock(self, collection: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(collection, threading.Lock())

    def _refresh(self, collection: str) -> CollectionReplica:
        replica = self._replicas.get(collection)
        if replica is None:
            return self._load(collection)
        while True:
            changes = self.store.changes_since(collection, replica.stream_id, CHANGES_PER_READ)
            if not changes:
                return replica
            if changes[0].seq != replica.seq + 1:  # events between were trimmed away
                log.warning("replica of %s is behind its trimmed change stream; reloading", collection)
                return self._load(collection)
            self._apply(collection, replica, changes)

    def _load(self, collection: str) -> CollectionReplica:
        snapshot = self.store.load_collection(collection, self.dimension)
        replica = CollectionReplica(self.dimension, snapshot.ids, snapshot.vectors, snapshot.seq, snapshot.stream_id)
        self._replicas[collection] = replica
        return replica

    def _apply(self, collection: str, replica: CollectionReplica, changes: list) -> None:
        # Read each changed image's current vector once. It may be newer than the event
        # (a later put, or gone after a later delete): applying the newer state is right,
        # and the later events will then change nothing.
        changed = list(dict.fromkeys(change.image_id for change in changes))
        for image_id, vector in zip(changed, self.store.get_vectors(collection, changed, self.dimension)):
            if vector is None:
                replica.delete(image_id)
            else:
                replica.put(image_id, vector)
        replica.seq = changes[-1].seq
        replica.stream_id = changes[-1].stream_id

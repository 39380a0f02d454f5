"""In-memory replicas of collections, kept fresh from Redis incrementally.

A query worker loads a collection once, then before every search applies the collection's
change events (puts and deletes, from a Redis Stream written atomically with each change)
since the position it holds. A query therefore sees every write that finished before it
started, at the cost of one round trip when nothing has changed. If the replica fell so
far behind that the stream was trimmed past it, it reloads.

Up to ``exact_max`` vectors a collection is searched exactly (one matrix-vector product);
above, through an HNSW graph (hnswlib) that holds the only copy of each vector. The graph
is built in the background while exact search goes on answering. HNSW replicas are saved
as snapshots with the stream position they include, so a restarted worker loads the
newest snapshot and catches up from the stream instead of rebuilding.

Beside the vectors, each replica holds the collection's usable PDQ hashes (worker.pdq),
changed by the same events and searched through a multi-index hash table; at 32 bytes each
(96 with the tables) they are always read from Redis on load rather than snapshotted.

A collection with a learned PCA-whitening (its ``whitening`` setting) is searched in the
whitened space: Redis keeps the vectors as extracted, the replica holds them whitened, and
queries are whitened the same way under the same lock. A new whitening (a ``whiten`` event)
has a replica in it loaded in the background; the old one answers, in its own whitening
and kept up to date, until the new one is swapped in (as HNSW builds are).
"""

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import hnswlib
import numpy as np

from shared import keys
from shared.errors import LookalikeError
from shared.store import Change, Store
from worker import metrics
from worker.descriptors import Whitening, l2_normalise
from worker.pdq import HashIndex, PdqHash
from worker.search import NEAR_TIE_CAP, RowsById, exact_scores, settle_near_ties, top_k

log = logging.getLogger(__name__)

CHANGES_PER_READ = 10_000
LOAD_CHUNK = 10_000


class SearchResult(NamedTuple):
    matches: list[tuple[str, float]]  # (id, score), best first
    searched: int  # how many vectors the collection held
    whitening: dict | None  # the whitening the search used (StoredWhitening.summary()), if any


class VectorIndex(Protocol):
    def __len__(self) -> int: ...
    def put(self, image_id: str, vector: np.ndarray) -> None: ...
    def delete(self, image_id: str) -> None: ...
    def search(self, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]: ...
    def vectors_of(self, image_ids: list[str]) -> list[np.ndarray | None]: ...


class ExactIndex:
    """Vectors as one contiguous float32 matrix (one copy each) with their ids; exact search."""

    kind = "exact"

    def __init__(self, dimension: int, capacity: int = 0):
        self.dimension = dimension
        self._rows = RowsById(dimension, np.float32, capacity)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._rows.rows

    def items(self):
        """Every ``(id, vector)`` held."""
        return zip(self._rows.ids, self._rows.matrix)

    @property
    def vectors(self) -> np.ndarray:
        return self._rows.matrix

    def put(self, image_id: str, vector: np.ndarray) -> None:
        self._rows.put(image_id, vector)

    def delete(self, image_id: str) -> None:
        self._rows.delete(image_id)

    def search(self, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """The ``k`` best ids and their scores, and any others within a hair of the k-th (for exact scoring)."""
        rows, scores = top_k(self._rows.matrix, query, k, near_ties=True)
        if len(rows) > k + NEAR_TIE_CAP:
            rows, scores = settle_near_ties(self._rows.matrix, rows, [self._rows.ids[row] for row in rows], query, k)
        return [self._rows.ids[row] for row in rows], scores

    def vectors_of(self, image_ids: list[str]) -> list[np.ndarray | None]:
        return [self._rows.row_of(image_id) for image_id in image_ids]


@dataclass(frozen=True)
class HnswConfig:
    m: int = 16
    ef_construction: int = 100
    ef_search: int = 512


class HnswIndex:
    """An hnswlib graph over inner product (= cosine for unit vectors); deletes reuse slots."""

    kind = "hnsw"

    def __init__(self, dimension: int, config: HnswConfig, capacity: int = 1024, graph: hnswlib.Index | None = None):
        self.dimension = dimension
        self.config = config
        self.labels: dict[str, int] = {}  # image id -> hnswlib label
        self.ids: dict[int, str] = {}  # hnswlib label -> image id
        self._next_label = 0
        if graph is None:
            graph = hnswlib.Index(space="ip", dim=dimension)
            graph.init_index(max_elements=capacity, M=config.m, ef_construction=config.ef_construction,
                             allow_replace_deleted=True)
        self.graph = graph
        self.graph.set_num_threads(1)  # one query or change at a time per collection (the replica's lock)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.labels

    def put(self, image_id: str, vector: np.ndarray) -> None:
        label = self.labels.get(image_id)
        if label is not None:  # replacement: hnswlib moves the point and relinks it
            self.graph.add_items(vector[None], [label])
            return
        if self.graph.get_current_count() >= self.graph.get_max_elements() and not self._has_deleted_slots():
            self.graph.resize_index(max(1024, self.graph.get_max_elements() * 3 // 2))
        label = self._next_label
        self._next_label += 1
        self.graph.add_items(vector[None], [label], replace_deleted=True)
        self.labels[image_id] = label
        self.ids[label] = image_id

    def delete(self, image_id: str) -> None:
        label = self.labels.pop(image_id, None)
        if label is not None:
            self.graph.mark_deleted(label)
            del self.ids[label]

    def put_many(self, pairs: list[tuple[str, np.ndarray]]) -> None:
        """Insert many vectors in one parallel call (bulk builds); ids already present are updated one by one."""
        fresh = [(image_id, vector) for image_id, vector in pairs if image_id not in self.labels]
        for image_id, vector in pairs:
            if image_id in self.labels:  # a scan may return an element twice
                self.put(image_id, vector)
        if not fresh:
            return
        needed = self.graph.get_current_count() + len(fresh)
        if needed > self.graph.get_max_elements():
            self.graph.resize_index(max(needed, self.graph.get_max_elements() * 3 // 2))
        labels = np.arange(self._next_label, self._next_label + len(fresh))
        self._next_label += len(fresh)
        self.graph.add_items(np.stack([vector for _, vector in fresh]), labels)
        for (image_id, _), label in zip(fresh, labels.tolist()):
            self.labels[image_id] = label
            self.ids[label] = image_id

    def search(self, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        k = min(k, len(self))
        if k == 0:
            return [], np.empty(0, dtype=np.float32)
        self.graph.set_ef(max(self.config.ef_search, k))
        labels, distances = self.graph.knn_query(query[None], k=k)
        return [self.ids[label] for label in labels[0]], (1.0 - distances[0]).astype(np.float32)

    def vectors_of(self, image_ids: list[str]) -> list[np.ndarray | None]:
        labels = [self.labels.get(image_id) for image_id in image_ids]
        present = [label for label in labels if label is not None]
        stored = iter(np.asarray(self.graph.get_items(present), dtype=np.float32) if present else [])
        return [None if label is None else next(stored) for label in labels]

    def _has_deleted_slots(self) -> bool:
        return self.graph.get_current_count() > len(self.labels)

    # --- Snapshots -------------------------------------------------------------------------

    def save(self, folder: Path, position: dict, whitening: str | None = None) -> None:
        """Save the graph and its ids with the stream ``position`` they include, as ``folder/<seq>/``;
        ``whitening``: when the whitening its vectors went through was learned (None: none).

        Written under a temporary name and renamed whole, so a reader finds complete
        snapshots only; older ones are removed afterwards.
        """
        final = folder / f"{position['seq']:015d}"
        staging = folder / f"{final.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.graph.save_index(str(staging / "graph.bin"))
        meta = {"position": position, "labels": self.labels, "next_label": self._next_label,
                "dimension": self.dimension, "config": self.config.__dict__, "whitening": whitening}
        (staging / "replica.json").write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        for older in folder.iterdir():
            if older.name != final.name and not older.name.endswith(".tmp"):
                shutil.rmtree(older, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, dimension: int, whitening: str | None = None) -> tuple["HnswIndex", dict] | None:
        """The newest complete snapshot in ``folder`` and the stream position it includes, if any holds vectors
        of ``dimension`` through the same whitening (learned at ``whitening``; None: none)."""
        if not folder.is_dir():
            return None
        complete = sorted(path for path in folder.glob("*") if path.is_dir() and not path.name.endswith(".tmp"))
        if not complete:
            return None
        newest = complete[-1]
        meta = json.loads((newest / "replica.json").read_text())
        if meta["dimension"] != dimension or meta.get("whitening") != whitening:
            return None
        graph = hnswlib.Index(space="ip", dim=dimension)
        graph.load_index(str(newest / "graph.bin"), allow_replace_deleted=True)
        index = cls(dimension, HnswConfig(**meta["config"]), graph=graph)
        index.labels = meta["labels"]
        index.ids = {label: image_id for image_id, label in index.labels.items()}
        index._next_label = meta["next_label"]
        return index, meta["position"]

@dataclass(frozen=True)
class LearnedWhitening:
    transform: Whitening
    summary: dict  # StoredWhitening.summary(): reported with results

    @staticmethod
    def apply(whitening: "LearnedWhitening | None", vectors: np.ndarray) -> np.ndarray:
        """Stored (or query) vectors as a replica holds them: whitened when the collection is."""
        return vectors if whitening is None else whitening.transform.apply(vectors)

    @staticmethod
    def label(whitening: "LearnedWhitening | None") -> str | None:
        """Which whitening vectors went through (when it was learned; None: none), as snapshots record it."""
        return None if whitening is None else whitening.summary["learned_at"]


@dataclass
class CollectionReplica:
    index: ExactIndex | HnswIndex
    hashes: HashIndex
    seq: int  # number of the last change event applied
    stream_id: str  # its id in the change stream ("0-0": none)
    whitening: LearnedWhitening | None = None
    changes_since_snapshot: int = 0
    refreshed_at: float = 0.0  # (monotonic) every change written before it has been applied

    @property
    def position(self) -> dict:
        return {"seq": self.seq, "stream_id": self.stream_id}

    def to_search_space(self, vectors: np.ndarray) -> np.ndarray:
        return LearnedWhitening.apply(self.whitening, vectors)


class StreamTail(threading.Thread):
    """Reads a collection's change events as they come, from a position on, into memory -- for a load, which
    applies them between chunks: the stream's window then need only outlast one read, not the load."""

    POLL_SECONDS = 0.01  # between reads when the stream has nothing new

    def __init__(self, store: Store, collection: str, seq: int, stream_id: str):
        super().__init__(name=f"tail-{collection}", daemon=True)
        self.store, self.collection = store, collection
        self.seq, self.stream_id = seq, stream_id
        self._changes: list[Change] = []
        self._broken = False  # events were trimmed before they were read (or lost in a failover)
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                changes = self.store.changes_since(self.collection, self.stream_id, CHANGES_PER_READ)
            except Exception:  # noqa: BLE001 - Redis away: the load itself fails and is tried again
                log.warning("tailing the changes of %s failed", self.collection, exc_info=True)
                changes = None
                self._stopped.wait(1)
            if not changes:
                self._stopped.wait(self.POLL_SECONDS)
                continue
            with self._lock:
                if changes[0].seq != self.seq + 1:
                    self._broken = True
                    return
                self._changes += changes
                self.seq, self.stream_id = changes[-1].seq, changes[-1].stream_id

    def take(self) -> list[Change] | None:
        """The changes read since the last take, oldest first; None once some were missed."""
        with self._lock:
            if self._broken:
                return None
            taken, self._changes = self._changes, []
            return taken

    def __enter__(self) -> "StreamTail":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self.join()


def _best_of(replicas: list["CollectionReplica"], vector: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The best ``k`` ``(id, score)`` over the replicas' indexes: each index's candidates scored again exactly
    (exact_scores), then ranked by score, ties by id -- the same answer however the vectors are spread over
    parts, and wherever each sits in its index."""
    found: list[tuple[str, float]] = []
    for replica in replicas:
        ids, _ = replica.index.search(vector, k)
        if ids:
            found += zip(ids, exact_scores(np.stack(replica.index.vectors_of(ids)), vector).tolist())
    found.sort(key=lambda match: (-match[1], match[0]))
    return found[:k]


class Replicas:
    """Every collection this worker has searched, each refreshed before each search."""

    def __init__(self, store: Store, dimension: int, *, exact_max: int = 200_000, hnsw: HnswConfig = HnswConfig(),
                 snapshot_dir: Path | None = None, snapshot_every_changes: int = 10_000, pdq_min_quality: int = 50,
                 load_wait_seconds: float = 30.0, staleness_seconds: float = 0.0, fork_snapshots: bool = True):
        self.store = store
        # Snapshots written by a forked child (a process without TensorFlow: a search process); else in place,
        # under the collection's lock (a process holding the model never forks: its libraries' threads).
        self.fork_snapshots = fork_snapshots
        # A bucket of a sharded collection is brought up to date by a query only when its last refresh is
        # older than this (a thread tails the streams meanwhile, tail_in_background); 0: every query, as a
        # collection of one bucket always is.
        self.staleness_seconds = staleness_seconds
        self.load_wait_seconds = load_wait_seconds
        self.pdq_min_quality = pdq_min_quality
        self.dimension = dimension
        self.exact_max = exact_max
        self.hnsw = hnsw
        self.snapshot_dir = snapshot_dir
        self.snapshot_every_changes = snapshot_every_changes
        self._replicas: dict[str, CollectionReplica] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # Background work in progress, by (kind, collection): HNSW builds, reloads in a new whitening.
        self._background: dict[tuple[str, str], threading.Thread] = {}
        self._again: set[tuple[str, str]] = set()  # asked for again while running
        # Loads in progress (and the last one's failure), by collection: set when a load attempt ends.
        self._loads: dict[str, threading.Event] = {}
        self._load_failures: dict[str, BaseException] = {}
        self._load_progress: dict[str, tuple[int, int]] = {}  # (vectors loaded, vectors in the collection)

    # A collection of several buckets has a replica per bucket (a *part*, shared.keys); the methods below
    # take the collection, search every part this process holds and merge. Internally, replicas, locks,
    # loads and snapshots are by part (for a collection of one bucket, the part is the collection).

    def search(self, collection: str, query: np.ndarray, k: int, min_score: float | None = None, *,
               refresh: bool = True, expand: int = 0, parts: list[str] | None = None,
               fresh: dict[str, int] | None = None) -> SearchResult:
        """The ``k`` most similar ids with their scores (at least ``min_score``), over the collection as it is now.

        ``refresh=False``: as of the last refresh -- for the second and later lookups of one
        query, which saw the collection as it was when it started. ``expand``: average query
        expansion over that many best matches first. ``parts``: only these of the collection's parts (a
        search group's share of its buckets); None: all. ``fresh``: changes (by part) the answer must include
        (a write token), whatever staleness is allowed.
        """
        with self._replicas_of(collection, refresh, parts, fresh) as replicas:
            found = _best_of(replicas, self._query_vector(replicas, query, expand), k)
            matches = [(image_id, float(score)) for image_id, score in found
                       if min_score is None or score >= min_score]
            whitening = None if replicas[0].whitening is None else replicas[0].whitening.summary
            return SearchResult(matches, sum(len(replica.index) for replica in replicas), whitening)

    def scores(self, collection: str, query: np.ndarray, image_ids: list[str], *,
               expand: int = 0, parts: list[str] | None = None) -> list[float | None]:
        """The score :meth:`search` gives each image for ``query`` (None: not in the collection), as of the
        last refresh."""
        with self._replicas_of(collection, False, parts) as replicas:
            vector = self._query_vector(replicas, query, expand)
            return [None if stored is None else float(exact_scores(stored, vector))
                    for stored in self._vectors_of(replicas, image_ids)]

    def _query_vector(self, replicas: list[CollectionReplica], query: np.ndarray, expand: int) -> np.ndarray:
        """The query in the replicas' space; with ``expand``, averaged with its best matches (average QE)."""
        vector = replicas[0].to_search_space(query[None])[0]
        if expand:
            best = _best_of(replicas, vector, expand)
            neighbours = [stored for stored in self._vectors_of(replicas, [image_id for image_id, _ in best])
                          if stored is not None]
            vector = l2_normalise(vector + np.sum(neighbours, axis=0)) if neighbours else vector
        return vector

    @staticmethod
    def _vectors_of(replicas: list[CollectionReplica], image_ids: list[str]) -> list[np.ndarray | None]:
        """Each id's vector in the search space, from whichever part holds it (None: none does)."""
        if len(replicas) == 1:
            return replicas[0].index.vectors_of(image_ids)
        found: list[np.ndarray | None] = [None] * len(image_ids)
        for replica in replicas:
            for position, vector in enumerate(replica.index.vectors_of(image_ids)):
                if vector is not None:
                    found[position] = vector
        return found

    def search_hashes(self, collection: str, query: bytes, max_distance: int, *, refresh: bool = True,
                      parts: list[str] | None = None, fresh: dict[str, int] | None = None) -> list[tuple[str, int]]:
        """Every image whose usable PDQ hash is within ``max_distance`` bits of ``query``, nearest first (ties by
        id, however the collection is spread)."""
        with self._replicas_of(collection, refresh, parts, fresh) as replicas:
            found = [match for replica in replicas for match in replica.hashes.within(query, max_distance)]
            return sorted(found, key=lambda match: (match[1], match[0]))

    def hash_distances(self, collection: str, image_ids: list[str], query: bytes, *,
                       refresh: bool = True, parts: list[str] | None = None) -> list[int | None]:
        """The PDQ distance from ``query`` to each image (None: it has no usable hash)."""
        with self._replicas_of(collection, refresh, parts) as replicas:
            distances: list[int | None] = [None] * len(image_ids)
            for replica in replicas:
                for position, image_id in enumerate(image_ids):
                    if distances[position] is None:
                        distances[position] = replica.hashes.distance_to(image_id, query)
            return distances

    @contextmanager
    def _replicas_of(self, collection: str, refresh: bool, parts: list[str] | None = None,
                     fresh: dict[str, int] | None = None) -> Iterator[list[CollectionReplica]]:
        """The replica of each of the collection's parts, with their locks held (taken in one order, so two
        queries never wait on each other), all in one whitening: while its buckets take a new one (each
        reloads in the background), a query waits for them up to ``load_wait_seconds``, then fails with
        ``collection_loading`` -- it never merges scores of two spaces."""
        parts = sorted(self.store.parts(collection) if parts is None else parts)
        deadline = time.monotonic() + self.load_wait_seconds
        for part in parts:  # every missing part's load under way at once, and waited for before any lock is taken
            if part not in self._replicas:
                self._loading(part)
        for part in parts:
            self._wait_until_loaded(part, deadline)
        while True:
            with ExitStack() as held:
                replicas = [held.enter_context(self._replica(part, refresh, (fresh or {}).get(part)))
                            for part in parts]
                if refresh:  # how old the state this query searches may be (0: all brought up to date now)
                    metrics.QUERY_STALENESS.observe(max(time.monotonic() - replica.refreshed_at
                                                        for replica in replicas))
                labels = [LearnedWhitening.label(replica.whitening) for replica in replicas]
                if len(set(labels)) == 1:
                    yield replicas
                    return
            self._await_whitening(collection, dict(zip(parts, labels)), deadline)

    def _await_whitening(self, collection: str, labels: dict[str, str | None], deadline: float) -> None:
        """Wait for the parts whose whitening is not the collection's current one to be reloaded in it (starting
        any reload not yet under way: a "whiten" event lost with a crash); past ``deadline``, collection_loading."""
        current = LearnedWhitening.label(self._read_whitening(collection))
        for part, label in labels.items():
            if label != current:
                self._start_background("whiten", part, self._reload_whitened)
        with self._locks_lock:
            running = [thread for (kind, part), thread in self._background.items()
                       if kind == "whiten" and part in labels]
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            raise LookalikeError("collection_loading", "This worker is loading the collection's buckets in its new "
                                 "whitening; retry shortly.", {"collection": collection,
                                                               "waited_seconds": self.load_wait_seconds})

    @contextmanager
    def _replica(self, collection: str, refresh: bool, min_seq: int | None = None) -> Iterator[CollectionReplica]:
        """The collection's replica, brought up to date if ``refresh``, with the collection's lock held. A bucket
        of a sharded collection (a part ``<c>/<b>``) is brought up to date only when its state is older than
        ``staleness_seconds`` or lacks change ``min_seq`` (a write token's).

        One this worker does not hold (yet, or again) is loaded in the background -- never in
        the query's own time and lock -- and waited for up to ``load_wait_seconds``; past that
        the query fails with ``collection_loading`` (a 503 to retry), never an answer from part
        of the collection.
        """
        deadline = time.monotonic() + self.load_wait_seconds
        while True:
            self._wait_until_loaded(collection, deadline)
            with self._lock(collection):
                replica = self._replicas.get(collection)
                if replica is not None and refresh and self._stale(collection, replica, min_seq):
                    replica = self.refresh(collection)
                if replica is not None:
                    yield replica
                    return

    def _stale(self, part: str, replica: CollectionReplica, min_seq: int | None) -> bool:
        return ("/" not in part or time.monotonic() - replica.refreshed_at > self.staleness_seconds
                or (min_seq is not None and replica.seq < min_seq))

    def tail_in_background(self) -> None:
        """Keep the buckets of sharded collections this process holds within ``staleness_seconds`` of their
        streams, in a thread of its own (a query then finds them fresh enough and reads no stream)."""
        def tail() -> None:
            while True:
                time.sleep(self.staleness_seconds / 2)
                for part in [part for part in list(self._replicas) if "/" in part]:
                    try:
                        with self._lock(part):
                            replica = self._replicas.get(part)
                            due = self.staleness_seconds / 2
                            if replica is not None and time.monotonic() - replica.refreshed_at >= due:
                                self.refresh(part)
                    except Exception:  # Redis away for a moment: queries refresh themselves meanwhile
                        log.warning("tailing the stream of %s failed; trying again", part, exc_info=True)

        threading.Thread(target=tail, daemon=True, name="replica-tail").start()

    def _wait_until_loaded(self, collection: str, deadline: float) -> None:
        """Return once this worker holds a replica of the collection, loading it in the background if need be."""
        while collection not in self._replicas:
            loaded = self._loading(collection)
            if not loaded.wait(max(0.0, deadline - time.monotonic())):
                done, total = self._load_progress.get(collection, (0, 0))
                raise LookalikeError("collection_loading",
                                     "This worker is still loading the collection; retry shortly.",
                                     {"collection": collection, "vectors_loaded": done, "vectors": total,
                                      "waited_seconds": self.load_wait_seconds})

    def _loading(self, collection: str, *, raise_failure: bool = True) -> threading.Event:
        """The load of the collection under way (set when it ends), started now if none is."""
        with self._locks_lock:
            loaded = self._loads.get(collection)
            if loaded is not None and not loaded.is_set():
                return loaded
            failure = self._load_failures.pop(collection, None) if loaded is not None else None
            if failure is not None and raise_failure:
                raise failure  # the load a query waited for failed (a Redis outage: the task waits it out)
            loaded = self._loads[collection] = threading.Event()
        self._start_background("load", collection, self._load_in_background, again_if_running=True)
        return loaded

    def prefetch(self, part: str) -> bool:
        """Whether this process holds the part loaded; if not, its load is under way (started now if need be)."""
        if part not in self._replicas:
            self._loading(part, raise_failure=False)
        return part in self._replicas

    def held_parts(self) -> list[str]:
        return list(self._replicas)

    def forget_part(self, part: str) -> None:
        """Let go of one part's replica (a bucket moved to another search group), its snapshots and metrics."""
        with self._lock(part):
            if self._replicas.pop(part, None) is not None:
                self._forget_snapshots(part)
                log.info("replica of %s let go: its bucket is searched elsewhere now", part)
        for gauge in (metrics.REPLICA_VECTORS, metrics.REPLICA_LAG):
            try:
                gauge.remove(part)
            except KeyError:  # never had a series
                pass

    def _load_in_background(self, collection: str) -> None:
        """Load the collection (its snapshot, else Redis), put it in place and bring it up to date."""
        with self._locks_lock:
            loaded = self._loads.setdefault(collection, threading.Event())
        try:
            replica = self._load_snapshot(collection)
            if replica is not None and not self._catch_up(collection, replica):
                replica = None  # the snapshot is further behind than the change stream reaches
            replica = replica or self._load_from_store(collection)
            with self._lock(collection):
                self._replicas[collection] = replica
                self.refresh(collection)
            log.info("collection %s: replica of %d vectors loaded", collection, len(replica.index))
        except BaseException as failure:  # noqa: BLE001 - kept for the next search to report, not lost in a thread
            log.warning("loading the replica of %s failed (%s); the next search tries again", collection, failure)
            with self._locks_lock:
                self._load_failures[collection] = failure
        finally:
            self._load_progress.pop(collection, None)
            loaded.set()

    def refresh(self, collection: str) -> CollectionReplica | None:
        """The collection's replica, brought up to date (call with the collection's lock held); None when it must
        be loaded again -- it fell behind its trimmed change stream, or the collection was dropped -- which is
        then started in the background."""
        replica = self._replicas.get(collection)
        if replica is None:
            return None
        started = time.monotonic()
        lag = None
        while True:
            changes = self.store.changes_since(collection, replica.stream_id, CHANGES_PER_READ)
            if not changes:
                break
            if not self._follows_on(collection, replica, changes):
                self._replicas.pop(collection, None)
                if any(change.op == "drop" for change in changes):
                    self._forget_snapshots(collection)
                return None
            if any(change.op == "whiten" for change in changes):  # this one answers until the new one is in
                log.info("collection %s has a new whitening: loading its replica in it in the background", collection)
                self._start_background("whiten", collection, self._reload_whitened, again_if_running=True)
            if lag is None:  # how long the oldest change waited for this replica
                lag = max(0.0, time.time() - changes[0].written_at)
            self._apply(collection, replica, changes)
        replica.refreshed_at = started
        metrics.REPLICA_LAG.labels(collection).set(lag or 0.0)
        metrics.REPLICA_VECTORS.labels(collection).set(len(replica.index))
        if isinstance(replica.index, ExactIndex) and len(replica.index) > self.exact_max:
            self._start_background("hnsw", collection, self._build_hnsw)  # searched exactly until the graph is ready
        elif replica.changes_since_snapshot >= self.snapshot_every_changes:
            self._snapshot(collection, replica)
        return replica

    def forget(self, collection: str) -> None:
        """Let go of a collection that no longer exists: its parts' replicas, snapshots and metric series."""
        with self._locks_lock:  # the parts searched here (no lock made for a name only asked about)
            held = [(part, lock) for part, lock in self._locks.items() if keys.collection_of(part) == collection]
        for part, lock in held:
            with lock:
                if self._replicas.pop(part, None) is not None:
                    self._forget_snapshots(part)
                    log.info("collection %s no longer exists; the replica of %s is gone", collection, part)
            for gauge in (metrics.REPLICA_VECTORS, metrics.REPLICA_LAG):
                try:
                    gauge.remove(part)
                except KeyError:  # never had a series
                    pass

    def wait_for_builds(self) -> None:
        """Block until every background build and reload in progress has finished (tests, benchmarks)."""
        while True:
            with self._locks_lock:
                running = list(self._background.values())
            if not running:
                return
            for thread in running:
                thread.join()

    def _start_background(self, kind: str, collection: str, work, *, again_if_running: bool = False) -> None:
        """Run ``work(collection)`` in a thread of its own, unless one of this kind runs for the collection;
        with ``again_if_running``, that one runs it once more when done (it may have read older state)."""
        with self._locks_lock:
            if (kind, collection) in self._background:
                if again_if_running:
                    self._again.add((kind, collection))
                return
            thread = threading.Thread(target=self._run_background, args=(kind, collection, work), daemon=True,
                                      name=f"{kind}-{collection}")
            self._background[(kind, collection)] = thread
        thread.start()

    def _run_background(self, kind: str, collection: str, work) -> None:
        while True:
            try:
                work(collection)
            finally:
                with self._locks_lock:
                    again = (kind, collection) in self._again
                    self._again.discard((kind, collection))
                    if not again:
                        self._background.pop((kind, collection), None)
            if not again:
                return

    @staticmethod
    def _follows_on(collection: str, replica: CollectionReplica, changes: list[Change]) -> bool:
        """Whether ``changes`` can be applied to the replica as they are: False when events between were
        trimmed away (or lost in a failover), or the collection was dropped -- it must be loaded anew."""
        if changes[0].seq != replica.seq + 1:
            log.warning("replica of %s no longer follows on from the change stream (trimmed past it, or the store "
                        "failed over and lost changes it had applied); reloading", collection)
            return False
        if any(change.op == "drop" for change in changes):
            log.info("collection %s was dropped; its replica starts again", collection)
            return False
        return True

    def _reload_whitened(self, collection: str) -> None:
        """Load the collection in its current whitening, swap it in and let the stream catch it up."""
        try:
            replica = self._load_from_store(collection)
            with self._lock(collection):
                self._forget_snapshots(collection)  # of vectors in the old whitening
                self._replicas[collection] = replica
                self.refresh(collection)
            log.info("collection %s: replica in its new whitening in place (%d vectors)", collection,
                     len(replica.index))
        except Exception:
            log.exception("reloading %s in its new whitening failed; it is loaded again on its next search", collection)
            with self._lock(collection):
                self._replicas.pop(collection, None)

    def _build_hnsw(self, collection: str) -> None:
        """Build a graph from a scan of Redis (a load into an HNSW index), then swap it in and let the stream
        catch it up; the exact replica keeps answering meanwhile (this runs in a thread)."""
        log.info("collection %s passed %d vectors: building its HNSW index in the background", collection,
                 self.exact_max)
        try:
            built = self._load_from_store(collection, hnsw=True)
            with self._lock(collection):
                self._replicas[collection] = built
                if self.refresh(collection) is not None:
                    self._snapshot(collection, built)
            log.info("collection %s: HNSW index of %d vectors in place", collection, len(built.index))
        except Exception:
            log.exception("HNSW build of %s failed; it stays exact and the build is retried", collection)

    def _lock(self, collection: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(collection, threading.Lock())

    def _load_from_store(self, collection: str, hnsw: bool = False) -> CollectionReplica:
        """Scan the collection's vectors in chunks into an exact index (or an HNSW graph) while a thread tails the
        change stream, and apply what it read after every chunk -- so a load converges however long it takes
        under ingest.

        The position is read first; changes made during the scan may or may not be in it, and
        replaying every event after the position (each re-reads the image's current state) makes
        the result exact either way. The tail reads the events as they come (an XRANGE every few
        milliseconds), so the stream's window need only outlast a moment, not a chunk, let alone
        the load. If the tail still falls out of the window (or the collection is dropped or gets
        a new whitening meanwhile), the load starts again.
        """
        while True:
            seq, stream_id = self.store.change_position(collection)
            whitening = self._read_whitening(collection)
            count = self.store.count_vectors(collection)
            self._load_progress[collection] = (0, count)
            if hnsw:
                index = HnswIndex(self._dimension_of(whitening), self.hnsw, capacity=max(1024, count * 5 // 4))
                index.graph.set_num_threads(os.cpu_count() or 1)  # a bulk build may use every core
            else:
                index = ExactIndex(self._dimension_of(whitening), count)
            replica = CollectionReplica(index, HashIndex(self.pdq_min_quality), seq, stream_id, whitening)
            loaded, complete = 0, True
            with StreamTail(self.store, collection, seq, stream_id) as tail:
                for chunk in self.store.scan_vectors(collection, self.dimension, LOAD_CHUNK):
                    vectors = replica.to_search_space(np.stack([vector for _, vector in chunk]))
                    if hnsw:
                        index.put_many(list(zip([image_id for image_id, _ in chunk], vectors)))
                    else:
                        for (image_id, _), vector in zip(chunk, vectors):
                            index.put(image_id, vector)
                    loaded += len(chunk)
                    self._load_progress[collection] = (loaded, count)
                    if not self._apply_tail(collection, replica, tail):
                        complete = False
                        break
                complete = complete and self._apply_tail(collection, replica, tail)
            if hnsw:
                index.graph.set_num_threads(1)
            if complete:
                replica.hashes = self._load_hashes(collection)
                return replica

    def _apply_tail(self, collection: str, replica: CollectionReplica, tail: "StreamTail") -> bool:
        """Apply what the tail has read since; False when the load must start again."""
        changes = tail.take()
        if changes is None:
            log.warning("the load of %s fell out of its change stream's window; loading again", collection)
            return False
        if any(change.op in ("drop", "whiten") for change in changes):
            log.info("collection %s was dropped or whitened anew during its load; loading again", collection)
            return False
        if changes:
            self._apply(collection, replica, changes)
        return True

    def _catch_up(self, collection: str, replica: CollectionReplica) -> bool:
        """Apply the change events after the replica's position; False when it must be loaded anew."""
        while True:
            changes = self.store.changes_since(collection, replica.stream_id, CHANGES_PER_READ)
            if not changes:
                return True
            if not self._follows_on(collection, replica, changes) or any(c.op == "whiten" for c in changes):
                return False
            self._apply(collection, replica, changes)

    def _read_whitening(self, part: str) -> LearnedWhitening | None:
        stored = self.store.get_whitening(keys.collection_of(part))
        if stored is None or stored.projection.shape[0] != self.dimension:
            return None
        return LearnedWhitening(Whitening(stored.mean, stored.projection), stored.summary())

    def _dimension_of(self, whitening: LearnedWhitening | None) -> int:
        return self.dimension if whitening is None else whitening.transform.dimension

    def _load_hashes(self, collection: str) -> HashIndex:
        """The collection's PDQ hashes as they are now (read after the position, like the vectors)."""
        hashes = HashIndex(self.pdq_min_quality)
        for chunk in self.store.scan_hashes(collection, LOAD_CHUNK):
            for image_id, stored in chunk:
                hashes.put(image_id, PdqHash.decode(stored))
        hashes.build()  # its lookup tables, here rather than in the first check
        return hashes

    def _load_snapshot(self, collection: str) -> CollectionReplica | None:
        if self.snapshot_dir is None:
            return None
        whitening = self._read_whitening(collection)
        try:
            loaded = HnswIndex.load(self._snapshot_folder(collection), self._dimension_of(whitening),
                                    LearnedWhitening.label(whitening))
        except Exception:  # a damaged snapshot costs a rebuild, not an outage
            log.warning("snapshot of %s unreadable; rebuilding from Redis", collection, exc_info=True)
            return None
        if loaded is None:
            return None
        index, position = loaded
        current_seq, _ = self.store.change_position(collection)
        if position["seq"] > current_seq:  # from another store, or the collection was recreated
            return None
        log.info("collection %s: snapshot at change %d of %d loaded", collection, position["seq"], current_seq)
        return CollectionReplica(index, self._load_hashes(collection), position["seq"], position["stream_id"],
                                 whitening)

    def _snapshot_folder(self, part: str) -> Path:
        """A part's snapshots: ``<collection>`` or ``<collection>.bucket-<n>`` (collection names hold no dot)."""
        return self.snapshot_dir / part.replace("/", ".bucket-")

    def _forget_snapshots(self, part: str) -> None:
        if self.snapshot_dir is not None:
            shutil.rmtree(self._snapshot_folder(part), ignore_errors=True)

    def _snapshot(self, collection: str, replica: CollectionReplica) -> None:
        """Write a snapshot of an HNSW replica from a forked copy of this process (call with the collection's
        lock held), as Redis writes its RDB file: the fork takes milliseconds, the child writes the graph as it
        was from its copy-on-write pages and exits, and this process goes on answering and changing the graph.

        (hnswlib's save holds the GIL throughout -- a second at 200,000 vectors -- so a thread
        would stop every query meanwhile. The child touches nothing but the graph and files: no
        TensorFlow, no CUDA, no logging, whose locks another thread may have held at the fork.)
        """
        if self.snapshot_dir is None or not isinstance(replica.index, HnswIndex):
            return
        with self._locks_lock:
            if ("snapshot", collection) in self._background:
                return  # one being written: the next one after more changes
        folder, position = self._snapshot_folder(collection), replica.position
        label = LearnedWhitening.label(replica.whitening)
        started = time.perf_counter()
        replica.changes_since_snapshot = 0  # (a failed write is tried again after as many changes)
        if not self.fork_snapshots:
            try:
                replica.index.save(folder, position, label)
            except OSError:
                log.exception("writing a snapshot of %s failed; the next one is tried after more changes", collection)
            return
        try:
            child = os.fork()
        except OSError:  # no memory or process slot for the copy now
            log.warning("could not fork to write a snapshot of %s; the next one is tried after more changes",
                        collection, exc_info=True)
            return
        if child == 0:  # the copy: write, and leave without running anything of the parent's
            try:
                replica.index.save(folder, position, label)
                os._exit(0)
            except BaseException:  # noqa: BLE001 - the parent logs the exit status
                os._exit(1)
        self._start_background("snapshot", collection,
                               lambda name: self._await_snapshot(name, child, position, started))

    @staticmethod
    def _await_snapshot(collection: str, child: int, position: dict, started: float) -> None:
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            log.info("collection %s: snapshot written (change %d) in %.1f s", collection, position["seq"],
                     time.perf_counter() - started)
        else:
            log.error("writing a snapshot of %s failed (exit status %d); the next one is tried after more changes",
                      collection, os.waitstatus_to_exitcode(status))

    def _apply(self, collection: str, replica: CollectionReplica, changes: list[Change]) -> None:
        # Read each changed image's current vector and hash once. They may be newer than the
        # event (a later put, or gone after a later delete): applying the newer state is
        # right, and the later events will then change nothing.
        changed = list(dict.fromkeys(change.image_id for change in changes if change.op in ("put", "del")))
        current = self.store.get_vectors_and_hashes(collection, changed, self.dimension)
        present = [vector for vector, _ in current if vector is not None]
        searchable = iter(replica.to_search_space(np.stack(present)) if present else [])
        for image_id, (vector, stored_hash) in zip(changed, current):
            if vector is not None:
                vector = next(searchable)
            if vector is None:  # deleted, or a hash banked alone
                replica.index.delete(image_id)
                if stored_hash is None:
                    replica.hashes.delete(image_id)
                else:
                    replica.hashes.put(image_id, PdqHash.decode(stored_hash))
            else:
                replica.index.put(image_id, vector)
                replica.hashes.put(image_id, None if stored_hash is None else PdqHash.decode(stored_hash))
        replica.seq = changes[-1].seq
        replica.stream_id = changes[-1].stream_id
        replica.changes_since_snapshot += len(changes)

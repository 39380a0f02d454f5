"""PDQ perceptual hashes (Meta's, through the ``pdqhash`` package) beside the CNN vectors.

A PDQ hash is 256 bits; two images are near-duplicates when few bits differ (Hamming
distance; Meta suggests <= 31). It is exact about re-encodes and resizes and blind to
crops, where the CNN does better: the two signals complement each other. Each hash comes
with a quality (0-100); flat or featureless images give low quality and unreliable hashes,
so hashes below the configured quality are kept in Redis but never matched.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import cv2
import numpy as np
import pdqhash

from shared.perceptual_hashes import HASH_BYTES, PdqHash  # noqa: F401 - the stored form, shared with the API


# PDQ reduces every image to 64x64 internally; hashing a copy of at most this side gives
# the same bits within a few and keeps a 12-megapixel photo from costing ~1 s.
HASH_INPUT_MAX_SIDE = 512


def compute_pdq(pixels_bgr: np.ndarray) -> PdqHash:
    """The PDQ hash and quality of a decoded BGR image."""
    height, width = pixels_bgr.shape[:2]
    scale = HASH_INPUT_MAX_SIDE / max(height, width)
    if scale < 1:
        pixels_bgr = cv2.resize(pixels_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                                interpolation=cv2.INTER_AREA)
    bits, quality = pdqhash.compute(cv2.cvtColor(pixels_bgr, cv2.COLOR_BGR2RGB))
    return PdqHash(np.packbits(bits.astype(np.uint8)).tobytes(), int(quality))


log = logging.getLogger(__name__)


# A hash takes milliseconds; one not back in this long comes from a wedged or lost hashing process.
HASH_TIMEOUT_SECONDS = 30
# Pools broken in a row (no hash between) after which this worker hashes in its threads: processes that cannot
# start or keep dying (an import error, a memory limit) must not cost every task a new pool.
BROKEN_POOLS_TO_GIVE_UP = 3


class HashProcesses:
    """PDQ hashes computed in processes of their own (``LOOKALIKE_HASH_PROCESSES``), or in the calling thread.

    pdqhash's C++ runs holding Python's interpreter lock: about 2.4 ms of every 2 MP image here, close to half
    of all the time a worker process's task threads hold it (py-spy, docs/benchmarks.md). What holds the lock
    is what bounds the images/s one worker process -- one per GPU -- can feed its model, whatever the cores.
    Through a pool of processes the worker's lock is held only to hand the image over (pickled by the pool's
    feeder thread: nothing may change the array after :meth:`start`; the callers only read it) and to take the
    answer back. Processes are spawned, not forked: the worker has started TensorFlow and CUDA. Whatever
    goes wrong with them -- a process killed, wedged, unable to start -- the image is hashed in its thread.
    """

    def __init__(self, processes: int):
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._broken_in_a_row = 0

    def start(self, pixels_bgr: np.ndarray) -> Callable[[], PdqHash]:
        """Start hashing the image; returns what waits for (or, without processes, computes) its hash. Started
        before the forward pass, the hash is computed while the image waits for its batch."""
        pool = self._executor()
        if pool is None:
            return lambda: compute_pdq(pixels_bgr)
        try:
            future = pool.submit(compute_pdq, pixels_bgr)
        except BrokenProcessPool:
            self._replace_broken(pool)
            return lambda: compute_pdq(pixels_bgr)
        except (RuntimeError, OSError):  # shutting down, or no thread or process to be had: this one here
            return lambda: compute_pdq(pixels_bgr)

        def result() -> PdqHash:
            try:
                hashed = future.result(timeout=HASH_TIMEOUT_SECONDS)
            except (BrokenProcessPool, TimeoutError):  # a hashing process died or hangs: this image here
                self._replace_broken(pool)
                return compute_pdq(pixels_bgr)
            except CancelledError:
                return compute_pdq(pixels_bgr)
            self._broken_in_a_row = 0
            return hashed

        return result

    def warm(self) -> None:
        """Start the processes now (a worker about to take tasks), not on its first image; none: nothing to do."""
        if self.processes > 0:
            self.start(np.zeros((32, 32, 3), np.uint8))()

    def _executor(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._pool is None and self.processes > 0:
                self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_hashing_process, initargs=(os.getpid(),))
            return self._pool

    def _replace_broken(self, broken: ProcessPoolExecutor) -> None:
        """Let the next hash start new processes -- once per broken pool, never a newer, healthy one -- or, after
        BROKEN_POOLS_TO_GIVE_UP in a row, hash in the threads from now on."""
        with self._lock:
            if self._pool is not broken:
                return
            self._pool = None
            self._broken_in_a_row += 1
            if self._broken_in_a_row >= BROKEN_POOLS_TO_GIVE_UP:
                log.error("PDQ hashing processes broke %d times in a row; hashing in the task threads from now on",
                          self._broken_in_a_row)
                self.processes = 0
            else:
                log.warning("a PDQ hashing process died or hung; starting new ones")
        # (CPython 3.11 has no public way to stop a wedged pool's processes: they are killed by hand.)
        for process in list((getattr(broken, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        broken.shutdown(wait=False)

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _hashing_process(parent_pid: int) -> None:
    """A hashing process's set-up: one OpenCV thread (a worker runs several of these beside its own threads),
    deaf to the terminal's and the service manager's signals (its worker's exit stops it: the pool's
    sentinels, or the watch below), and gone once the worker that started it is -- a worker killed outright
    (SIGKILL, the OOM killer) cannot stop its pool, whose processes hold both ends of their queue and would
    otherwise wait on it for ever."""
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()


# Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index
# hashing", CVPR 2012): the 256 bits are cut into 16 chunks of 16 bits, each with its own buckets.
# Two hashes within distance r differ in at least one chunk by at most r // 16 bits (pigeonhole),
# so looking up the query's chunk values and their neighbours within that many bits finds every
# hash within r; the candidates are then checked exactly.
CHUNKS, CHUNK_BITS = 16, 16
# Neighbours within one bit: 17 lookups per chunk, enough for any r <= 31 (Meta's threshold). A
# larger r makes the lookups outgrow a scan: then the index scans.
MAX_CHUNK_RADIUS = 1
_ONE_BIT_FLIPS = np.array([0] + [1 << bit for bit in range(CHUNK_BITS)], dtype=np.uint16)
# Below this many hashes a scan (under 0.5 ms) beats keeping 16 bucket tables (4 MB of offsets).
INDEX_MIN_HASHES = 16_384


class HashIndex:
    """A collection's usable PDQ hashes, searched within a Hamming distance by multi-index hashing.

    Hashes live in slots (32 bytes each) that never move; a deleted slot is reused. The 16
    bucket tables (4 bytes per hash each) are built over the slots at one moment; slots
    written since (the fresh ones) are checked one by one beside the lookups, and the tables
    are rebuilt when those pass a sixteenth of the collection -- so puts and deletes stay O(1)
    and every answer is the scan's, exactly.
    """

    def __init__(self, min_quality: int):
        self.min_quality = min_quality
        self._words = np.empty((0, HASH_BYTES // 8), dtype=np.uint64)  # by slot
        self._alive = np.empty(0, dtype=bool)
        self._ids: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        # Hashes written since the tables were built, in order, with their slots: kept contiguous, so checking
        # them is one sequential pass. An entry whose slot was deleted or written again since is stale.
        self._fresh_slots = np.empty(1024, dtype=np.int64)
        self._fresh_words = np.empty((1024, HASH_BYTES // 8), dtype=np.uint64)
        self._fresh_count = 0
        self._order: np.ndarray | None = None  # (CHUNKS, built) slots sorted by each chunk's value
        self._starts: np.ndarray | None = None  # (CHUNKS, 2**CHUNK_BITS + 1) where each value's slots begin

    def __len__(self) -> int:
        return len(self._slot_of)

    def put(self, image_id: str, stored: PdqHash | None) -> None:
        """Set an image's hash; None (no hash) or one below the minimum quality removes it."""
        if stored is None or stored.quality < self.min_quality:
            self.delete(image_id)
            return
        slot = self._slot_of.get(image_id)
        if slot is None:
            slot = self._free.pop() if self._free else self._grow()
            self._slot_of[image_id] = slot
            self._ids[slot] = image_id
            self._alive[slot] = True
        self._words[slot] = np.frombuffer(stored.bits, dtype=np.uint64)
        if self._order is not None:
            if self._fresh_count == len(self._fresh_slots):
                self._fresh_slots = np.concatenate([self._fresh_slots, np.empty_like(self._fresh_slots)])
                self._fresh_words = np.concatenate([self._fresh_words, np.empty_like(self._fresh_words)])
            self._fresh_slots[self._fresh_count] = slot
            self._fresh_words[self._fresh_count] = self._words[slot]
            self._fresh_count += 1

    def delete(self, image_id: str) -> None:
        slot = self._slot_of.pop(image_id, None)
        if slot is not None:
            self._ids[slot] = None
            self._alive[slot] = False
            self._free.append(slot)

    def build(self) -> None:
        """(Re)build the bucket tables over every hash now held; small collections keep none (they scan)."""
        self._fresh_count = 0
        if len(self) < INDEX_MIN_HASHES:
            self._order = self._starts = None
            return
        slots = np.flatnonzero(self._alive).astype(np.int32)
        chunks = self._words[slots].view(np.uint16)  # (n, CHUNKS)
        self._order = np.empty((CHUNKS, len(slots)), dtype=np.int32)
        self._starts = np.empty((CHUNKS, 2**CHUNK_BITS + 1), dtype=np.int64)
        for chunk in range(CHUNKS):
            values = chunks[:, chunk]
            self._order[chunk] = slots[np.argsort(values, kind="stable")]
            self._starts[chunk, 0] = 0
            np.cumsum(np.bincount(values, minlength=2**CHUNK_BITS), out=self._starts[chunk, 1:])

    def within(self, query: bytes, max_distance: int) -> list[tuple[str, int]]:
        """Every image whose hash is within ``max_distance`` bits of ``query``, nearest first (then by id)."""
        if (self._order is None and len(self) >= INDEX_MIN_HASHES) or self._fresh_count > max(1024, len(self) // 16):
            self.build()
        query_words = np.frombuffer(query, dtype=np.uint64)
        if self._order is None or max_distance // CHUNKS > MAX_CHUNK_RADIUS:
            candidates = np.flatnonzero(self._alive)
        else:  # may repeat a slot, or name a deleted or rewritten one: checked against the slot's current hash
            candidates = np.concatenate(self._bucket_slots(query_words) or [np.empty(0, dtype=np.int32)])
        distances = _popcount_rows(self._words[candidates] ^ query_words)
        near = (distances <= max_distance) & self._alive[candidates]
        slots, distances = candidates[near], distances[near]
        if self._order is not None and self._fresh_count:
            fresh_slots, fresh_distances = self._fresh_within(query_words, max_distance)
            slots, distances = np.concatenate([slots, fresh_slots]), np.concatenate([distances, fresh_distances])
        slots, first = np.unique(slots, return_index=True)
        found = sorted(zip(distances[first].tolist(), (self._ids[slot] for slot in slots)))
        return [(image_id, distance) for distance, image_id in found]

    def _fresh_within(self, query_words: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots written since the build that are within ``max_distance``, with their distances."""
        distances = _popcount_rows(self._fresh_words[:self._fresh_count] ^ query_words)
        near = np.flatnonzero(distances <= max_distance)
        slots = self._fresh_slots[near]
        current = self._alive[slots] & (self._words[slots] == self._fresh_words[near]).all(axis=1)
        return slots[current], distances[near][current]

    def _bucket_slots(self, query_words: np.ndarray) -> list[np.ndarray]:
        """The slots whose chunk, in some chunk, is within one bit of the query's (stale ones are checked later)."""
        found = []
        for chunk, value in enumerate(query_words.view(np.uint16)):
            probes = (value ^ _ONE_BIT_FLIPS).astype(np.int64)
            begins, ends = self._starts[chunk, probes], self._starts[chunk, probes + 1]
            order = self._order[chunk]
            found += [order[begin:end] for begin, end in zip(begins.tolist(), ends.tolist()) if end > begin]
        return found

    def distance_to(self, image_id: str, query: bytes) -> int | None:
        """Hamming distance to one image's hash (None: it has no usable hash)."""
        slot = self._slot_of.get(image_id)
        if slot is None:
            return None
        return int(np.bitwise_count(self._words[slot] ^ np.frombuffer(query, dtype=np.uint64)).sum())

    def _grow(self) -> int:
        slot = len(self._ids)
        if slot == self._words.shape[0]:
            capacity = max(16, slot + slot // 2)
            words = np.zeros((capacity, self._words.shape[1]), dtype=np.uint64)
            words[:slot] = self._words
            alive = np.zeros(capacity, dtype=bool)
            alive[:slot] = self._alive
            self._words, self._alive = words, alive
        self._ids.append(None)
        return slot


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words).sum(axis=1, dtype=np.int32)

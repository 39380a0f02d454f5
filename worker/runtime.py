"""What one worker process holds for its whole life: settings, the store and the model."""

import logging
import os
import socket
import threading
import time

from shared.images import PixelBudget
from shared.queue import INDEX_QUEUE, QUERY_QUEUE, WEBHOOK_QUEUE, search_queue
from shared.settings import get_settings
from shared.store import Store, utc_now
from worker.delivery import HELD, LEASES, restore_orphans, return_stranded
from worker.extractor import DIMENSION, FeatureExtractor
from worker.keras_backend import accelerators
from worker.pdq import HashProcesses
from worker.placement import PlacementKeeper
from worker.replica import HnswConfig, Replicas
from worker.weights import resolve_weights

log = logging.getLogger(__name__)

_extractor: FeatureExtractor | None = None
_init_lock = threading.Lock()
_store: Store | None = None
_replicas: Replicas | None = None
_decode_budget: PixelBudget | None = None
_hash_processes: HashProcesses | None = None

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

# What a process does (``python -m worker --role``). The model's roles compute vectors and hashes (index,
# query and check tasks; whitening on the index queue); the search roles hold replicas of their groups'
# collections and rank queries against them (queues search.<group>); ``all`` is both, in one process.
ROLES = ("all", "embed", "search", "webhooks")
_role = "all"
_groups: tuple[str, ...] = ()  # the search groups this process serves


def set_role(role: str, groups: tuple[str, ...] | None = None) -> None:
    """This process's role, and for ``search`` and ``all`` the groups it serves (default: every group)."""
    global _role, _groups
    if role not in ROLES:
        raise ValueError(f"unknown worker role {role!r}; one of {', '.join(ROLES)}")
    known = get_settings().search_groups
    if groups is not None and (role not in ("search", "all") or set(groups) - set(known)):
        raise ValueError(f"--groups goes with --role search or all, and names groups of {', '.join(known)}")
    _role = role
    _groups = (groups or known) if role in ("search", "all") else ()


def role_queues() -> tuple[str, ...]:
    """The queues this process consumes."""
    searching = tuple(search_queue(group) for group in _groups)
    return {"all": (INDEX_QUEUE, QUERY_QUEUE, *searching), "embed": (INDEX_QUEUE, QUERY_QUEUE),
            "search": searching, "webhooks": (WEBHOOK_QUEUE,)}[_role]


def role_holds_model() -> bool:
    return _role in ("all", "embed")


def serves_group(group: str) -> bool:
    """Whether this process holds the replicas of ``group`` (then it ranks that group's queries itself)."""
    return group in _groups


RANDOM_WEIGHTS_WARNING = (
    "This worker uses RANDOM weights (LOOKALIKE_WEIGHTS=random): scores only show that pixels are alike, "
    "not what images depict. For tests and offline smoke runs only."
)


def get_store() -> Store:
    global _store
    if _store is None:
        _store = Store.from_settings(get_settings())
    return _store


def get_decode_budget() -> PixelBudget:
    """The pixels this process may be decoding at once (``LOOKALIKE_DECODE_PIXEL_BUDGET``)."""
    global _decode_budget
    with _init_lock:
        if _decode_budget is None:
            _decode_budget = PixelBudget(get_settings().decode_pixel_budget)
        return _decode_budget


def get_hash_processes() -> HashProcesses:
    """Where this process computes PDQ hashes (``LOOKALIKE_HASH_PROCESSES``; the pool starts on first use)."""
    global _hash_processes
    with _init_lock:
        if _hash_processes is None:
            _hash_processes = HashProcesses(get_settings().hash_processes)
        return _hash_processes


def get_replicas() -> Replicas:
    """The in-memory replicas of the collections this process searches."""
    global _replicas
    with _init_lock:
        if _replicas is None:
            settings = get_settings()
            _replicas = Replicas(
                get_store(),
                DIMENSION,
                exact_max=settings.exact_max,
                hnsw=HnswConfig(settings.hnsw_m, settings.hnsw_ef_construction, settings.hnsw_ef_search),
                snapshot_dir=settings.snapshot_path,
                snapshot_every_changes=settings.snapshot_every_changes,
                pdq_min_quality=settings.pdq_min_quality,
                load_wait_seconds=settings.load_wait_seconds,
                staleness_seconds=settings.staleness_seconds,
                fork_snapshots=not role_holds_model(),
            )
            if settings.staleness_seconds > 0:
                _replicas.tail_in_background()
        return _replicas


def warm_up_wanted(setting: bool | None) -> bool:
    """``LOOKALIKE_WARM_UP``; unset, only where a GPU makes the first pass of each shape slow to compile."""
    return setting if setting is not None else bool(accelerators())


def get_extractor() -> FeatureExtractor:
    """The process's VGG16, built on first use in this process (never inherited through a fork)."""
    global _extractor
    with _init_lock:
        if _extractor is None:
            settings = get_settings()
            source = resolve_weights(settings.weights, settings.seed)
            started = time.monotonic()
            extractor = FeatureExtractor(
                source,
                seed=settings.seed,
                max_batch=settings.max_batch,
                batch_wait_seconds=settings.batch_wait_ms / 1000,
                mixed_precision=settings.mixed_precision,
                pooling=settings.pooling,
                input_mode=settings.input_mode,
                scales=settings.scales,
            )
            log.info("VGG16 loaded with weights %s in %.1f s", source.label, time.monotonic() - started)
            if warm_up_wanted(settings.warm_up):
                try:
                    log.info("forward passes warmed up (seconds by batch size, compiling included): %s",
                             extractor.warm_up())
                except Exception as exc:  # e.g. out of GPU memory at the largest batch: say so, keep no cold model
                    raise WarmUpFailed(f"a forward pass of each batch size up to LOOKALIKE_MAX_BATCH="
                                       f"{settings.max_batch} failed: {exc}") from exc
            if source.is_random:
                log.warning(RANDOM_WEIGHTS_WARNING)
            _extractor = extractor
        return _extractor


class WarmUpFailed(RuntimeError):
    """The model loaded but could not run the batches it would be sent (LOOKALIKE_WARM_UP)."""


# A worker process is dead once it has missed this many heartbeats: /readyz stops counting it,
# its task leases lapse and the messages it held are given to others.
LIVENESS_BEATS = 3


def liveness_seconds() -> float:
    return LIVENESS_BEATS * get_settings().heartbeat_seconds


class Heartbeat(threading.Thread):
    """Every ``LOOKALIKE_HEARTBEAT_SECONDS``: renews the leases of the tasks this process runs, announces
    the process and the task messages it holds, restores those of dead workers (one process at a
    time), and for a worker with the model, announces the model for /readyz."""

    def __init__(self, app, interval_seconds: float, extractor: FeatureExtractor | None = None):
        super().__init__(name="lookalike-heartbeat", daemon=True)
        self.app = app
        self.extractor = extractor
        self.since = utc_now()
        self.interval = interval_seconds
        self.stopped = threading.Event()
        self.keeper: PlacementKeeper | None = None  # (search processes) their share of the buckets

    def info(self) -> dict:
        """What /readyz shows about this worker."""
        extractor = self.extractor
        return {
            "model": extractor.descriptor.model,
            "dimension": extractor.descriptor.dimension,
            "weights": extractor.descriptor.weights,
            "random_weights": extractor.weights.is_random,
            "backend": extractor.backend,  # KERAS_BACKEND
            "mixed_precision": extractor.mixed_precision,
            "max_batch": extractor.batcher.max_batch,
            # forward passes by number of images in them, since this worker started
            "batch_sizes": {str(size): count for size, count in extractor.batcher.batch_sizes().items()},
            "pid": os.getpid(),
            "since": self.since,
        }

    def beat(self, steady: bool) -> None:
        """One heartbeat; ``steady``: the last LIVENESS_BEATS beats all went through, so this process may
        judge which others are dead (after an outage, every process needs that long to announce itself again)."""
        store, alive_for = get_store(), liveness_seconds()
        return_stranded(self.app)
        for task_id in store.renew_leases(LEASES.snapshot(), alive_for):
            log.warning("task %s: its lease lapsed while it ran (this worker stalled?); another execution may "
                        "run it, and this one will write nothing", task_id)
        store.beat_consumer(WORKER_NAME, HELD.snapshot(), alive_for, _groups)
        if self.extractor is not None:
            store.heartbeat(WORKER_NAME, self.info())
        if steady and store.claim_reaper(WORKER_NAME, self.interval):
            restore_orphans(self.app, store, live_within_seconds=alive_for, older_than_seconds=alive_for)
            from worker.tasks import give_up_late_gathers  # (the tasks module imports this one)

            give_up_late_gathers()
        if _groups:
            self._keeper().tend(alive_for)

    def _keeper(self) -> PlacementKeeper:
        if self.keeper is None:
            settings = get_settings()
            self.keeper = PlacementKeeper(get_store(), get_replicas(), WORKER_NAME, _groups, settings.search_groups,
                                          settings.gather_timeout_seconds)
        return self.keeper

    def run(self) -> None:
        beats_in_a_row = 0
        while not self.stopped.is_set():
            try:
                self.beat(steady=beats_in_a_row >= LIVENESS_BEATS)
                beats_in_a_row += 1
            except Exception:  # Redis away for a moment: try again next beat
                beats_in_a_row = 0
                log.warning("heartbeat to Redis failed", exc_info=True)
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        try:
            get_store().forget_consumer(WORKER_NAME)
            if self.extractor is not None:
                get_store().remove_worker(WORKER_NAME)
        except Exception:
            log.warning("could not remove this worker's heartbeat", exc_info=True)

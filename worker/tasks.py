"""The index and query tasks. Each keeps its own outcome in its task record (shared.store)."""

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from shared.errors import LookalikeError
from shared.images import decode_image
from shared.schemas import (
    CHECK_TASK,
    DEFAULT_COLLECTION_SETTINGS,
    FAILED,
    FINISHED_STATES,
    INDEX_TASK,
    QUERY_TASK,
    SUCCEEDED,
    matches_filter,
    verdict,
)
from shared.store import VECTOR_DTYPE
from worker.batcher import QUERY_PRIORITY
from worker.celery_app import app
from worker.runtime import RANDOM_WEIGHTS_WARNING, get_extractor, get_replicas, get_store

log = logging.getLogger(__name__)

# Candidates read in the first round of a filtered query (at least 4k).
FILTER_FIRST_DEPTH = 100


@app.task(name=INDEX_TASK)
def index_image(task_id: str, collection: str, image_id: str, metadata: dict) -> None:
    def index() -> dict:
        extractor = get_extractor()
        vector = extractor.extract([decode_image(_load_upload_bytes(task_id))])[0]
        replaced = get_store().save_image(collection, image_id, vector, metadata, extractor.descriptor)
        return {"collection": collection, "image_id": image_id, "replaced": replaced} | _model_labels()

    _run(task_id, index)


@app.task(name=QUERY_TASK)
def query_image(task_id: str, collection: str, k: int, min_score: float | None = None,
                filter: dict | None = None, by_vector: bool = False) -> None:  # noqa: A002 - the API's name
    def query() -> dict:
        info, settings = _collection(collection)
        matches = _ranked_matches(collection, _query_vector(task_id, info, by_vector), k, min_score, filter or {})
        for match in matches:
            match["near_duplicate"] = match["score"] >= settings["match_threshold"]
        near_duplicate = bool(matches) and matches[0]["near_duplicate"]
        return {"matches": matches, "verdict": verdict(settings["kind"], near_duplicate), **settings} | _model_labels()

    _run(task_id, query)


@app.task(name=CHECK_TASK)
def check_image(task_id: str, collection: str, k: int = 1, min_score: float | None = None,
                filter: dict | None = None, by_vector: bool = False) -> None:  # noqa: A002 - the API's name
    def check() -> dict:
        info, settings = _collection(collection)
        best = next(iter(_ranked_matches(collection, _query_vector(task_id, info, by_vector), 1, None,
                                         filter or {})), None)
        near_duplicate = best is not None and best["score"] >= settings["match_threshold"]
        return {"verdict": verdict(settings["kind"], near_duplicate), "near_duplicate": near_duplicate,
                "best_match": best, **settings} | _model_labels()

    _run(task_id, check)


def _collection(collection: str) -> tuple[dict | None, dict]:
    """The collection's info and its settings, in one round trip (None: nothing stored yet)."""
    info = get_store().collection_info(collection)
    return info, info["settings"] if info else dict(DEFAULT_COLLECTION_SETTINGS)


def _query_vector(task_id: str, info: dict | None, by_vector: bool) -> np.ndarray:
    """The query's unit vector: as sent (validated and normalised by the API), or extracted from the image."""
    if by_vector:
        return np.frombuffer(_load_upload_bytes(task_id), dtype=VECTOR_DTYPE)
    extractor = get_extractor()
    vector = extractor.extract([decode_image(_load_upload_bytes(task_id))], priority=QUERY_PRIORITY)[0]
    _check_descriptor(info, extractor.descriptor)  # image vectors only compare with their own kind
    return vector


def _ranked_matches(collection: str, vector: np.ndarray, k: int, min_score: float | None, wanted: dict) -> list[dict]:
    """The best ``k`` matches whose metadata passes the filter.

    Without a filter, the search's top k. With one, candidates are read in score order,
    in ever deeper rounds, until k pass or the collection (or ``min_score``) is exhausted:
    when k matching images exist, k are returned.
    """
    store = get_store()
    depth = k if not wanted else max(4 * k, FILTER_FIRST_DEPTH)
    while True:
        found = get_replicas().search(collection, vector, depth, min_score)
        metadata = store.get_metadata(collection, [image_id for image_id, _ in found.matches])
        matches = [
            {"id": image_id, "score": round(score, 6), "metadata": meta}
            for (image_id, score), meta in zip(found.matches, metadata)
            if meta is not None and matches_filter(meta, wanted)  # None: deleted after the search
        ]
        exhausted = len(found.matches) < depth or depth >= found.searched
        if len(matches) >= k or exhausted:
            return matches[:k]
        depth *= 4


def _check_descriptor(info: dict | None, descriptor) -> None:
    if info and info["model"] is not None and (info["model"], info["weights"]) != (descriptor.model, descriptor.weights):
        raise LookalikeError(
            "descriptor_mismatch",
            "This collection was indexed with another model or weights than this worker uses; "
            "its scores would mean nothing.",
            {"collection": {"model": info["model"], "weights": info["weights"]}, "worker": descriptor.to_mapping()},
        )


def _run(task_id: str, work: Callable[[], dict[str, Any]]) -> None:
    """Run one task's work and record its outcome; a failure stays inside its own task."""
    store = get_store()
    record = store.get_task(task_id)
    if record is not None and record["state"] in FINISHED_STATES:
        log.info("task %s already %s; redelivery ignored", task_id, record["state"])
        return
    store.mark_running(task_id)
    try:
        result = work()
    except LookalikeError as exc:
        store.finish_task(task_id, FAILED, error=exc.to_dict())
    except redis.exceptions.OutOfMemoryError:  # Redis at maxmemory refused the write
        error = LookalikeError("store_full", "The store is full; the image was not written.")
        store.finish_task(task_id, FAILED, error=error.to_dict())
    except Exception:
        log.exception("task %s failed unexpectedly", task_id)
        error = LookalikeError("internal_error", "The worker failed unexpectedly; see its log.", {"task_id": task_id})
        store.finish_task(task_id, FAILED, error=error.to_dict())
    else:
        store.finish_task(task_id, SUCCEEDED, result=result)


def _load_upload_bytes(task_id: str) -> bytes:
    data = get_store().get_upload(task_id)
    if data is None:
        raise LookalikeError("upload_expired", "The upload expired before a worker took the task; submit it again.")
    return data


def _model_labels() -> dict:
    """What produced a result; random weights are labelled loudly."""
    extractor = get_extractor()
    labels = {"model": extractor.descriptor.model, "weights": extractor.descriptor.weights}
    if extractor.weights.is_random:
        labels["warning"] = RANDOM_WEIGHTS_WARNING
    return labels

"""The index and query tasks. Each keeps its own outcome in its task record (shared.store)."""

import logging
from collections.abc import Callable
from typing import Any

from shared.errors import LookalikeError
from shared.images import decode_image
from shared.schemas import FAILED, FINISHED_STATES, INDEX_TASK, QUERY_TASK, SUCCEEDED
from worker.batcher import QUERY_PRIORITY
from worker.celery_app import app
from worker.runtime import RANDOM_WEIGHTS_WARNING, get_extractor, get_replicas, get_store

log = logging.getLogger(__name__)


@app.task(name=INDEX_TASK)
def index_image(task_id: str, collection: str, image_id: str, metadata: dict) -> None:
    def index() -> dict:
        extractor = get_extractor()
        vector = extractor.extract([_load_upload(task_id)])[0]
        replaced = get_store().save_image(collection, image_id, vector, metadata, extractor.descriptor)
        return {"collection": collection, "image_id": image_id, "replaced": replaced} | _model_labels()

    _run(task_id, index)


@app.task(name=QUERY_TASK)
def query_image(task_id: str, collection: str, k: int) -> None:
    def query() -> dict:
        extractor = get_extractor()
        vector = extractor.extract([_load_upload(task_id)], priority=QUERY_PRIORITY)[0]
        store = get_store()
        info = store.collection_info(collection)
        descriptor = extractor.descriptor
        if info and info["model"] is not None and (info["model"], info["weights"]) != (descriptor.model, descriptor.weights):
            raise LookalikeError(
                "descriptor_mismatch",
                "This collection was indexed with another model or weights than this worker uses; "
                "its scores would mean nothing.",
                {"collection": {"model": info["model"], "weights": info["weights"]}, "worker": descriptor.to_mapping()},
            )
        best = get_replicas().search(collection, vector, k)
        metadata = store.get_metadata(collection, [image_id for image_id, _ in best])
        matches = [
            {"id": image_id, "score": round(score, 6), "metadata": meta}
            for (image_id, score), meta in zip(best, metadata)
            if meta is not None  # deleted after the search
        ]
        return {"matches": matches} | _model_labels()

    _run(task_id, query)


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
    except Exception:
        log.exception("task %s failed unexpectedly", task_id)
        error = LookalikeError("internal_error", "The worker failed unexpectedly; see its log.", {"task_id": task_id})
        store.finish_task(task_id, FAILED, error=error.to_dict())
    else:
        store.finish_task(task_id, SUCCEEDED, result=result)


def _load_upload(task_id: str):
    data = get_store().get_upload(task_id)
    if data is None:
        raise LookalikeError("upload_expired", "The uploaded image expired before a worker took the task; submit it again.")
    return decode_image(data)


def _model_labels() -> dict:
    """What produced a result; random weights are labelled loudly."""
    extractor = get_extractor()
    labels = {"model": extractor.descriptor.model, "weights": extractor.descriptor.weights}
    if extractor.weights.is_random:
        labels["warning"] = RANDOM_WEIGHTS_WARNING
    return labels

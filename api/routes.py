"""HTTP API v1 routes. docs/api.md describes them for callers."""

import uuid

from flask import Blueprint, current_app, jsonify, request, url_for

from shared.errors import LookalikeError
from shared.images import inspect_image
from shared.schemas import (
    INDEX_TASK,
    MAX_K,
    QUERY_TASK,
    TASK_KINDS,
    TASK_QUEUES,
    parse_bounded_int,
    parse_metadata,
    validate_collection_name,
    validate_image_id,
)

blueprint = Blueprint("api", __name__)


def _context() -> dict:
    return current_app.extensions["lookalike"]


# --- Submitting work ------------------------------------------------------------------------


@blueprint.post("/v1/collections/<collection>/images")
def index_image(collection: str):
    settings = _context()["settings"]
    collection = validate_collection_name(collection)
    image_id = validate_image_id(request.form["id"]) if "id" in request.form else uuid.uuid4().hex
    metadata = parse_metadata(request.form.get("metadata"), settings.max_metadata_bytes)
    upload = _read_image_upload()
    task_id = _submit(INDEX_TASK, upload, {"collection": collection, "image_id": image_id},
                      {"collection": collection, "image_id": image_id, "metadata": metadata})
    return _accepted({"task_id": task_id, "image_id": image_id}, task_id)


@blueprint.post("/v1/collections/<collection>/queries")
def query_image(collection: str):
    settings = _context()["settings"]
    collection = validate_collection_name(collection)
    k = parse_bounded_int(request.form.get("k"), default=settings.default_k, low=1, high=MAX_K, code="invalid_k", name="k")
    upload = _read_image_upload()
    task_id = _submit(QUERY_TASK, upload, {"collection": collection, "k": k}, {"collection": collection, "k": k})
    return _accepted({"task_id": task_id}, task_id)


def _read_image_upload() -> bytes:
    settings = _context()["settings"]
    file = request.files.get("image")
    if file is None:
        raise LookalikeError(
            "image_missing",
            "Send the image as a multipart/form-data file field named 'image'.",
            {"received_files": sorted(request.files.keys())[:20], "received_fields": sorted(request.form.keys())[:20]},
        )
    data = file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise LookalikeError(
            "upload_too_large", f"The image is larger than {settings.max_upload_bytes} bytes.",
            {"max_bytes": settings.max_upload_bytes},
        )
    inspect_image(data, settings.max_pixels)  # format by magic bytes, dimensions from the header
    return data


def _submit(task_name: str, upload: bytes, record_fields: dict, task_kwargs: dict) -> str:
    """Store the upload and a queued task record, then enqueue; undo the records if enqueueing fails."""
    store, celery = _context()["store"], _context()["celery"]
    task_id = uuid.uuid4().hex
    store.submit(task_id, TASK_KINDS[task_name], record_fields, upload)
    try:
        celery.send_task(task_name, kwargs={"task_id": task_id, **task_kwargs}, task_id=task_id, queue=TASK_QUEUES[task_name])
    except Exception:
        store.discard_submission(task_id)
        raise
    return task_id


def _accepted(body: dict, task_id: str):
    status_url = url_for("api.get_task", task_id=task_id)
    response = jsonify({**body, "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


# --- Reading results and stored images ---------------------------------------------------------


@blueprint.get("/v1/tasks/<task_id>")
def get_task(task_id: str):
    settings = _context()["settings"]
    wait = parse_bounded_int(request.args.get("wait"), default=0, low=0, high=settings.max_wait_seconds,
                             code="invalid_wait", name="wait")
    record = _context()["store"].wait_for_task(task_id, wait)
    if record is None:
        raise LookalikeError("task_not_found", "No such task; task records expire after "
                             f"{settings.task_ttl_seconds} seconds.", {"task_id": task_id[:100]})
    return jsonify(_task_resource(record))


def _task_resource(record: dict) -> dict:
    resource = {
        "task_id": record["task_id"],
        "kind": record["kind"],
        "state": record["state"],
        "result": record.get("result"),
        "error": record.get("error"),
        "submitted_at": record["submitted_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }
    resource.update({name: record[name] for name in ("collection", "image_id", "k") if name in record})
    return resource


@blueprint.get("/v1/collections/<collection>/images/<path:image_id>")
def get_image(collection: str, image_id: str):
    image = _context()["store"].get_image(validate_collection_name(collection), validate_image_id(image_id))
    if image is None:
        raise _image_not_found(collection, image_id)
    return jsonify(image)


@blueprint.delete("/v1/collections/<collection>/images/<path:image_id>")
def delete_image(collection: str, image_id: str):
    if not _context()["store"].delete_image(validate_collection_name(collection), validate_image_id(image_id)):
        raise _image_not_found(collection, image_id)
    return jsonify({"id": image_id, "deleted": True})


def _image_not_found(collection: str, image_id: str) -> LookalikeError:
    return LookalikeError("image_not_found", "No image with this id in this collection.",
                          {"collection": collection, "id": image_id})


@blueprint.get("/v1/collections/<collection>")
def get_collection(collection: str):
    info = _context()["store"].collection_info(validate_collection_name(collection))
    if info is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    return jsonify(info)


# --- Health -------------------------------------------------------------------------------


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    settings, store = _context()["settings"], _context()["store"]
    store.redis.ping()  # a connection error becomes 503 store_unavailable
    workers = store.live_workers(max_age_seconds=3 * settings.heartbeat_seconds)
    if not workers:
        raise LookalikeError("not_ready", "No worker with a loaded model has reported in.",
                             {"redis": "ok", "workers": []})
    weights = sorted({worker["weights"] for worker in workers})
    body = {"status": "ready", "redis": "ok", "weights": weights, "workers": workers}
    if any(worker["random_weights"] for worker in workers):
        body["warning"] = "RANDOM weights in use: similarity scores do not reflect image content. Tests and smoke runs only."
    return jsonify(body)

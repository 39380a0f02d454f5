"""HTTP API v1 routes. docs/api.md describes them for callers."""

import re
import uuid
from collections import Counter

from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, request, url_for
from flask import Response as FlaskResponse
from spectree import Response

from api.auth import may_read_record, may_see_collection, submitter
from api.observability import metrics_response
from api.waits import RETRY_AFTER_SECONDS
from api.openapi import (
    Accepted,
    Batch,
    BatchAccepted,
    BatchForm,
    CheckForm,
    CollectionInfo,
    CollectionDropped,
    CollectionList,
    BucketMove,
    BucketPlacement,
    CollectionSettings,
    CollectionSettingsAnswer,
    Deleted,
    Error,
    HashesRequest,
    HashesStored,
    Health,
    Image,
    ImageIds,
    IndexForm,
    PageQuery,
    QueryForm,
    Ready,
    ReadyQuery,
    Task,
    VectorsRequest,
    VectorsStored,
    WaitQuery,
    responses,
    spec,
)
from shared import logs
from shared.errors import LookalikeError
from shared.images import inspect_image
from shared.outbound import Allowlist, check_url
from shared.perceptual_hashes import parse_pdq_hash
from shared.schemas import (
    bucket_groups,
    parse_flag,
    parse_partial,
    parse_write_token,
    write_token,
    CALLBACK_PENDING,
    CHECK_TASK,
    CNN,
    PDQ,
    INDEX_TASK,
    MAX_EXPAND,
    MAX_K,
    QUERY_TASK,
    TASK_KINDS,
    TASK_QUEUES,
    parse_bounded_int,
    parse_collection_list,
    parse_signals,
    task_resource,
    FINISHED_STATES,
    MAX_JSON_DEPTH,
    QUEUED,
    RUNNING,
    VECTOR_DIMENSION,
    parse_aligned_array,
    parse_filter,
    parse_metadata,
    parse_json,
    parse_min_score,
    validate_collection_name,
    validate_collection_settings,
    validate_image_id,
    validate_metadata,
)
from shared.store import Descriptor, encode_vector, utc_now
from shared.vectors import parse_vector, parse_vector_field

blueprint = Blueprint("api", __name__)

FORM_OVERHEAD_BYTES = 256 * 1024
# A 512-d vector as a JSON array of floats, with its id and metadata, stays well under this.
VECTOR_REQUEST_BYTES_PER_ITEM = 32 * 1024


def _context() -> dict:
    return current_app.extensions["lookalike"]


def apply_request_limits() -> None:
    """Set the body limits of the route about to run, before anything reads the body.

    A hook (not the views) sets them, so that hooks running before the view, such as the
    idempotency check that reads the form, parse it under the same limits.
    """
    settings = _context()["settings"]
    single_upload = settings.max_upload_bytes + settings.max_metadata_bytes + FORM_OVERHEAD_BYTES
    if request.endpoint in ("api.index_image", "api.query_image", "api.check_image"):
        request.max_content_length = single_upload  # the image and the form fields around it
    elif request.endpoint == "api.index_batch":
        request.max_content_length = settings.max_batch_bytes
        request.max_form_memory_size = settings.max_batch_files * settings.max_metadata_bytes + FORM_OVERHEAD_BYTES
    elif request.endpoint == "api.store_vectors":
        request.max_content_length = settings.max_vectors_per_request * VECTOR_REQUEST_BYTES_PER_ITEM


# --- Submitting work ------------------------------------------------------------------------


@blueprint.post("/v1/collections/<collection>/images")
@spec.validate(form=IndexForm, resp=responses({"HTTP_202": Accepted}, 400, 409, 413, 415, 422), tags=["images"],
               skip_validation=True)
def index_image(collection: str):
    """Index one image, uploaded as ``image`` or fetched by the worker from ``url``."""
    settings = _context()["settings"]
    collection = validate_collection_name(collection)
    image_id = validate_image_id(request.form["id"]) if "id" in request.form else uuid.uuid4().hex
    metadata = parse_metadata(request.form.get("metadata"), settings.max_metadata_bytes)
    callback = _callback_from_form()
    upload, url = _image_or_url()
    [task_id] = _enqueue_index(collection, [(image_id, metadata, upload)], url=url, callback=callback)
    return _accepted({"task_id": task_id, "image_id": image_id}, url_for("api.get_task", task_id=task_id))


@blueprint.post("/v1/collections/<collection>/queries")
@spec.validate(form=QueryForm, resp=responses({"HTTP_202": Accepted, "HTTP_200": Task}, 400, 409, 413, 415, 422),
               tags=["queries"],
               skip_validation=True)
def query_image(collection: str):
    """Rank the collection against an uploaded ``image`` or a given ``vector``.

    ``expand`` (0-10): average query expansion -- the query is averaged with that many of its
    best CNN matches and searched again.
    """
    settings = _context()["settings"]
    k = parse_bounded_int(request.form.get("k"), default=settings.default_k, low=1, high=MAX_K, code="invalid_k", name="k")
    expand = parse_bounded_int(request.form.get("expand"), default=0, low=0, high=MAX_EXPAND, code="invalid_expand",
                               name="expand")
    return _submit_query(QUERY_TASK, collection, k=k, min_score=parse_min_score(request.form.get("min_score")),
                         default_signals="both", extra={"expand": expand} if expand else None)


@blueprint.post("/v1/collections/<collection>/checks")
@spec.validate(form=CheckForm, resp=responses({"HTTP_202": Accepted, "HTTP_200": Task}, 400, 409, 413, 415, 422),
               tags=["queries"],
               skip_validation=True)
def check_image(collection: str):
    """Is this image (or vector) a near-duplicate of anything in the collection? A verdict and the best match.

    ``allow_collections`` (a JSON array of names) are consulted when the verdict would be
    ``block``: a near-duplicate there turns it into ``allow``.
    """
    allow_collections = parse_collection_list(request.form.get("allow_collections"), name="allow_collections")
    for allowed in allow_collections:
        if not may_see_collection(allowed):
            raise LookalikeError("forbidden", "This API key may not use this collection.", {"collection": allowed})
    extra = {"allow_collections": allow_collections} if allow_collections else {}
    return _submit_query(CHECK_TASK, collection, k=1, min_score=None, default_signals="both", extra=extra)


def _submit_query(task_name: str, collection: str, *, k: int, min_score: float | None, default_signals: str,
                  extra: dict | None = None):
    collection = validate_collection_name(collection)
    signals = parse_signals(request.form.get("signals"), default_signals)
    fields = {"collection": collection, "k": k, "min_score": min_score, "filter": parse_filter(request.form.get("filter")),
              "signals": list(signals), **(extra or {})}
    fresh = parse_write_token(request.form.get("write_token"))
    if fresh:  # (JSON keys are strings)
        fields["fresh"] = {str(bucket): seq for bucket, seq in fresh.items()}
    if parse_partial(request.form.get("partial")):
        fields["partial"] = True
    callback = _callback_from_form()
    wait = _preferred_wait()
    vector, pdq_hash = request.form.get("vector"), request.form.get("hash")
    given = [name for name, present in (("image", "image" in request.files), ("url", "url" in request.form),
                                        ("vector", vector is not None), ("hash", pdq_hash is not None)) if present]
    if len(given) > 1 and given != ["image", "url"]:  # (an image and a URL: _image_or_url says so)
        raise LookalikeError("ambiguous_query_input", "Send one of an 'image' file, a 'url', a 'vector' or a 'hash'.",
                             {"received": given})
    if vector is not None:
        if CNN not in signals or request.form.get("signals") == "both":
            raise LookalikeError("signal_unavailable", "A query by vector has no PDQ hash: use signals=cnn.",
                                 {"signals": list(signals)})
        query_input, url = encode_vector(parse_vector_field(vector, _collection_dimension(collection))), None
    elif pdq_hash is not None:
        if request.form.get("signals") not in (None, "pdq"):
            raise LookalikeError("signal_unavailable", "A query by hash has no CNN vector: use signals=pdq.",
                                 {"signals": list(signals)})
        fields["signals"] = [PDQ]
        query_input, url = parse_pdq_hash(pdq_hash, request.form.get("hash_quality")).encode(), None
    else:
        query_input, url = _image_or_url()
    if url is not None:
        fields["url"] = url
    kwargs = fields | {"by_vector": vector is not None} | ({"by_hash": True} if pdq_hash is not None else {})
    if callback is not None:
        fields["callback"] = callback
    [task_id] = _enqueue(task_name, [(fields, kwargs, query_input)])
    status_url = url_for("api.get_task", task_id=task_id)
    if wait:  # Prefer: wait=N -- the result in this answer when the task finishes in time
        _, record = _wait_for(task_id, wait)
        if record is not None and record["state"] in FINISHED_STATES:
            response = jsonify(task_resource(record))
            response.headers["Preference-Applied"] = f"wait={wait}"
            response.headers["Content-Location"] = status_url
            return response
    return _accepted({"task_id": task_id}, status_url)


# RFC 7240's wait preference: "Prefer: wait=10", alone or among others ("respond-async, wait=10").
PREFER_WAIT = re.compile(r"(?:^|[,;]\s*)wait\s*=\s*\"?(\d{1,4})\"?\s*(?:$|[,;])", re.IGNORECASE)


def _preferred_wait() -> int:
    """Seconds the caller will wait for the result in the answer (``Prefer: wait=N``), at most the service's
    longest wait (``LOOKALIKE_MAX_WAIT_SECONDS``); 0 without the preference. A preference the server cannot
    honour is ignored, as RFC 7240 asks, never refused."""
    found = PREFER_WAIT.search(request.headers.get("Prefer", ""))
    return min(int(found.group(1)), _context()["settings"].max_wait_seconds) if found else 0


def _wait_for(task_id: str, wait: int) -> tuple[bool, dict | None]:
    """Whether the request could wait (the API's bounds on waiting requests, api/waits.py: with no slot free,
    not at all), and the task once it finishes within ``wait`` seconds, or as it stands then (None: expired)."""
    key = g.get("api_key")
    caller = f"key:{key.key_id}" if key is not None else f"addr:{request.remote_addr}"
    with _context()["wait_slots"].slot(caller) as waited:
        return waited, (_context()["store"].wait_for_task(task_id, wait) if waited else None)


@blueprint.put("/v1/collections/<collection>")
@spec.validate(json=CollectionSettings, resp=responses({"HTTP_200": CollectionSettingsAnswer}, 400, 409, 413),
               tags=["collections"], skip_validation=True)
def put_collection(collection: str):
    """Set a collection's settings: ``match_threshold`` for near-duplicates, ``pdq_max_distance``, ``kind``
    (block or allow), ``whitening`` (search in a PCA-whitened space learned from the collection) and ``group``
    (the search group holding it; null: chosen by a hash of its name)."""
    collection = validate_collection_name(collection)
    settings = validate_collection_settings(_json_body("invalid_collection_settings"),
                                            _context()["settings"].search_groups)
    buckets = _context()["store"].put_collection_settings(collection, settings)
    return jsonify({"collection": collection, "settings": settings | {"buckets": buckets}})


@blueprint.post("/v1/collections/<collection>/vectors")
@spec.validate(json=VectorsRequest, resp=responses({"HTTP_201": VectorsStored}, 400, 409, 413, 422),
               tags=["images"], skip_validation=True)
def store_vectors(collection: str):
    """Store precomputed vectors (migrations, re-indexing from another system), synchronously.

    JSON body: ``{"items": [{"id", "vector", "metadata"?}, ...], "model"?, "weights"?}``.
    Every item is checked before any is written: one bad vector refuses the request.
    """
    settings = _context()["settings"]
    collection = validate_collection_name(collection)
    # NaN and Infinity may reach the vectors (refused there: 422 vector_not_finite), never the metadata
    # (validate_metadata); the body may nest as deep as an item's metadata, plus its own three levels.
    body = _json_body("invalid_json", max_depth=MAX_JSON_DEPTH + 3, allow_non_finite=True)
    if not isinstance(body, dict) or not isinstance(body.get("items"), list) or not body["items"]:
        raise LookalikeError("invalid_json", 'Send a JSON object {"items": [{"id", "vector", "metadata"}, ...]}.')
    items = body["items"]
    if len(items) > settings.max_vectors_per_request:
        raise LookalikeError("too_many_vectors", f"At most {settings.max_vectors_per_request} vectors per request.",
                             {"max_items": settings.max_vectors_per_request, "received": len(items)})
    store = _context()["store"]
    store.check_room_for_images(settings.store_full_ratio, collection)
    descriptor = _descriptor_for_vectors(collection, body)
    checked, seen_ids = [], set()
    for position, item in enumerate(items):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise LookalikeError("invalid_image_id", "Each item needs an 'id' string.")
            image_id = validate_image_id(item["id"])
            if image_id in seen_ids:
                raise LookalikeError("duplicate_image_id", "This id appears earlier in the same request.")
            seen_ids.add(image_id)
            vector = parse_vector(item.get("vector"), descriptor.dimension)
            metadata = validate_metadata(item.get("metadata", {}), settings.max_metadata_bytes)
        except LookalikeError as error:
            error.details = {"item": position, **error.details}
            raise
        checked.append((image_id, vector, metadata, None, None))  # no image, so no PDQ hash or thumbnail
    written: dict[int, int] = {}
    replaced = store.save_images(collection, checked, descriptor, written=written)
    return jsonify({"collection": collection, "stored": len(checked), "replaced": replaced,
                    "model": descriptor.model, "weights": descriptor.weights, "write_token": write_token(written)}), 201


@blueprint.post("/v1/collections/<collection>/hashes")
@spec.validate(json=HashesRequest, resp=responses({"HTTP_201": HashesStored}, 400, 409, 413, 422),
               tags=["images"], skip_validation=True)
def store_hashes(collection: str):
    """Bank PDQ hashes without their images (hash lists moderation teams share), synchronously.

    JSON body: ``{"items": [{"id", "hash", "quality"?, "metadata"?}, ...]}``. Each becomes an entry of the
    collection that checks and queries by PDQ find (by image or by hash), beside or instead of indexed images:
    an id that held an image is replaced by the hash alone. Every item is checked before any is written.
    """
    settings = _context()["settings"]
    collection = validate_collection_name(collection)
    body = _json_body("invalid_json", max_depth=MAX_JSON_DEPTH + 3)
    if not isinstance(body, dict) or not isinstance(body.get("items"), list) or not body["items"]:
        raise LookalikeError("invalid_json", 'Send a JSON object {"items": [{"id", "hash", "quality", "metadata"}, ...]}.')
    items = body["items"]
    if len(items) > settings.max_vectors_per_request:
        raise LookalikeError("too_many_hashes", f"At most {settings.max_vectors_per_request} hashes per request.",
                             {"max_items": settings.max_vectors_per_request, "received": len(items)})
    store = _context()["store"]
    store.check_room_for_images(settings.store_full_ratio, collection)
    checked, seen_ids = [], set()
    for position, item in enumerate(items):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise LookalikeError("invalid_image_id", "Each item needs an 'id' string.")
            image_id = validate_image_id(item["id"])
            if image_id in seen_ids:
                raise LookalikeError("duplicate_image_id", "This id appears earlier in the same request.")
            seen_ids.add(image_id)
            pdq_hash = parse_pdq_hash(item.get("hash"), item.get("quality"))
            metadata = validate_metadata(item.get("metadata", {}), settings.max_metadata_bytes)
        except LookalikeError as error:
            error.details = {"item": position, **error.details}
            raise
        checked.append((image_id, None, metadata, pdq_hash.encode(), None))  # no image: no vector, no thumbnail
    written: dict[int, int] = {}
    replaced = store.save_images(collection, checked, None, written=written)
    return jsonify({"collection": collection, "stored": len(checked), "replaced": replaced,
                    "write_token": write_token(written)}), 201


def _json_body(code: str, **options):
    """The request's JSON body through the one JSON parser (shared.schemas.parse_json); None when the request
    is not JSON. Refused with ``code``: malformed, too deep, or (unless allowed) NaN or Infinity."""
    if not request.is_json:
        return None
    return parse_json(request.get_data(cache=True), code, "body", **options)


def _collection_dimension(collection: str) -> int:
    info = _context()["store"].collection_info(collection)
    return info["dimension"] if info and info["dimension"] else VECTOR_DIMENSION


def _descriptor_for_vectors(collection: str, body: dict) -> Descriptor:
    """What the stored vectors will be labelled as: the collection's, the caller's, or the workers'."""
    store = _context()["store"]
    if isinstance(body.get("model"), str) and isinstance(body.get("weights"), str):
        return Descriptor(body["model"], VECTOR_DIMENSION, body["weights"])  # checked against the collection's on write
    info = store.collection_info(collection)
    if info and info["model"]:
        return Descriptor(info["model"], info["dimension"], info["weights"])
    workers = store.live_workers(max_age_seconds=3 * _context()["settings"].heartbeat_seconds)
    if workers:
        return Descriptor(workers[0]["model"], workers[0]["dimension"], workers[0]["weights"])
    raise LookalikeError("descriptor_unknown", "The collection is new and no worker is running: say which model and "
                         "weights produced these vectors ('model' and 'weights' in the request).")


@blueprint.post("/v1/collections/<collection>/batches")
@spec.validate(form=BatchForm, resp=responses({"HTTP_202": BatchAccepted}, 400, 409, 413, 415, 422), tags=["images"],
               skip_validation=True)
def index_batch(collection: str):
    """Bulk upload: many ``image`` parts, optional aligned ``ids`` and ``metadata`` JSON arrays.

    Each image becomes its own index task. A bad item is reported with its error code and
    does not sink the others; only a malformed request as a whole is refused.
    """
    settings = _context()["settings"]
    collection = validate_collection_name(collection)
    callback = _callback_from_form()
    files = request.files.getlist("image")
    if not files:
        raise LookalikeError("image_missing", "Send the images as multipart/form-data file fields named 'image'.")
    if len(files) > settings.max_batch_files:
        raise LookalikeError("batch_too_large", f"At most {settings.max_batch_files} images per batch.",
                             {"max_files": settings.max_batch_files, "received": len(files)})
    ids = parse_aligned_array(request.form.get("ids"), len(files), code="invalid_ids", name="ids")
    metadata = parse_aligned_array(request.form.get("metadata"), len(files), code="invalid_metadata", name="metadata")

    items: list[dict] = []  # one per file, in order: {"image_id", "task_id"[, "error"]}
    accepted: list[tuple[int, tuple[str, dict, bytes]]] = []  # (position, (image_id, metadata, upload))
    seen_ids: set[str] = set()
    for position, file in enumerate(files):
        image_id = ids[position] if ids else uuid.uuid4().hex
        try:
            image = _check_batch_item(image_id, metadata[position] if metadata else {}, file, seen_ids)
        except LookalikeError as error:
            items.append({"image_id": image_id if isinstance(image_id, str) else None, "task_id": None,
                          "error": error.to_dict()})
            continue
        seen_ids.add(image_id)
        items.append({"image_id": image_id, "task_id": None})
        accepted.append((position, image))
    if not accepted:
        raise LookalikeError("no_valid_images", "No image in the batch could be accepted.", {"items": items})

    task_ids = _enqueue_index(collection, [item for _, item in accepted], callback=callback)
    for (position, _), task_id in zip(accepted, task_ids):
        items[position]["task_id"] = task_id
    batch_id = uuid.uuid4().hex
    owner = {"api_key_id": submitter()} if submitter() else {}  # who may read it; never shown
    _context()["store"].save_batch(batch_id, {"batch_id": batch_id, "collection": collection,
                                              "submitted_at": utc_now(), "items": items, **owner})
    body = {"batch_id": batch_id, "accepted": len(accepted), "rejected": len(items) - len(accepted), "tasks": items}
    return _accepted(body, url_for("api.get_batch", batch_id=batch_id))


def _check_batch_item(image_id, metadata, file, seen_ids: set[str]) -> tuple[str, dict, bytes]:
    """One bulk-upload item as ``(image_id, metadata, upload)``, or the error that rejects it."""
    if not isinstance(image_id, str):
        raise LookalikeError("invalid_image_id", "Image ids must be strings.")
    validate_image_id(image_id)
    if image_id in seen_ids:
        raise LookalikeError("duplicate_image_id", "This id appears earlier in the same batch.")
    metadata = validate_metadata(metadata, _context()["settings"].max_metadata_bytes)
    return image_id, metadata, _read_image(file)


def _read_image(file) -> bytes:
    """An uploaded file's bytes once its size, format and dimensions pass the cheap checks."""
    settings = _context()["settings"]
    if file is None:
        raise LookalikeError(
            "image_missing",
            "Send the image as a multipart/form-data file field named 'image'.",
            # (a part may have an empty name: Werkzeug keys it None)
            {"received_files": sorted(filter(None, request.files.keys()))[:20],
             "received_fields": sorted(filter(None, request.form.keys()))[:20]},
        )
    data = file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise LookalikeError(
            "upload_too_large", f"The image is larger than {settings.max_upload_bytes} bytes.",
            {"max_bytes": settings.max_upload_bytes},
        )
    inspect_image(data, settings.max_pixels)  # format by magic bytes, dimensions from the header
    return data


def _enqueue_index(collection: str, images: list[tuple[str, dict, bytes | None]], *, url: str | None = None,
                   callback: dict | None = None) -> list[str]:
    """One index task per ``(image_id, metadata, upload)``, if the store has room for more images.

    ``url``: the single image is fetched by the worker (its upload is None).
    """
    _context()["store"].check_room_for_images(_context()["settings"].store_full_ratio, collection)
    fetched = {"url": url} if url is not None else {}
    with_callback = {"callback": callback} if callback is not None else {}
    return _enqueue(INDEX_TASK, [
        ({"collection": collection, "image_id": image_id, **fetched, **with_callback},
         {"collection": collection, "image_id": image_id, "metadata": metadata, **fetched}, upload)
        for image_id, metadata, upload in images
    ])


def _image_or_url() -> tuple[bytes | None, str | None]:
    """The request's image: uploaded bytes (checked), or a URL on the fetch allow list for the worker to fetch."""
    url = request.form.get("url")
    if url is None:
        return _read_image(request.files.get("image")), None
    if "image" in request.files:
        raise LookalikeError("ambiguous_image_input", "Send either an 'image' file or a 'url', not both.")
    settings = _context()["settings"]
    check_url(url, Allowlist(settings.fetch_allowlist), invalid_code="invalid_url", refused_code="url_not_allowed",
              what="image URL")
    return None, url


def _callback_from_form() -> dict | None:
    """The webhook of a submission (``callback_url``), refused unless webhooks are set up and its host is allowed."""
    url = request.form.get("callback_url")
    if url is None:
        return None
    settings = _context()["settings"]
    key = g.get("api_key")
    if key is not None and key.webhook_secret is None:  # signed with the key's own secret (worker/webhooks.py)
        raise LookalikeError("callback_not_allowed", "This API key has no webhook secret (it predates per-key "
                             f"secrets): an operator gives it one with `python -m api.keys webhook-secret {key.key_id}`.",
                             {"key_id": key.key_id})
    if key is None and settings.webhook_secret is None:
        raise LookalikeError("callback_not_allowed", "Webhooks are off on this service (no LOOKALIKE_WEBHOOK_SECRET).")
    check_url(url, Allowlist(settings.callback_allowlist), invalid_code="invalid_callback_url",
              refused_code="callback_not_allowed", what="callback URL")
    return {"url": url, "state": CALLBACK_PENDING, "attempts": []}


def _enqueue(task_name: str, submissions: list[tuple[dict, dict, bytes]]) -> list[str]:
    """Store uploads and queued task records, then enqueue; each is ``(record fields, task kwargs, upload)``.

    Records come first so that a worker never takes a task whose record is missing; a
    task that could not be enqueued has its records removed again.
    """
    store, celery = _context()["store"], _context()["celery"]
    task_ids = [uuid.uuid4().hex for _ in submissions]
    traced = {"request_id": logs.request_id.get()}  # the worker logs under the same request id
    if submitter():  # the task belongs to this key: only it (or admin) reads it, its webhooks carry its signature
        traced["api_key_id"] = submitter()
    store.submit([(task_id, TASK_KINDS[task_name], fields | traced, upload)
                  for task_id, (fields, _, upload) in zip(task_ids, submissions)])
    sent = 0
    try:
        for task_id, (_, kwargs, _) in zip(task_ids, submissions):
            celery.send_task(task_name, kwargs={"task_id": task_id, **kwargs}, task_id=task_id, queue=TASK_QUEUES[task_name])
            sent += 1
    except Exception:
        store.discard_submissions(task_ids[sent:])
        raise
    return task_ids


def _accepted(body: dict, status_url: str):
    response = jsonify({**body, "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


# --- Reading results and stored images ---------------------------------------------------------


@blueprint.get("/v1/tasks/<task_id>")
@spec.validate(query=WaitQuery, resp=responses({"HTTP_200": Task}, 400, 404), tags=["tasks"], skip_validation=True)
def get_task(task_id: str):
    """A task as it stands; ``wait`` holds the answer until it finishes, within the bounds of api/waits.py."""
    settings, store = _context()["settings"], _context()["store"]
    wait = parse_bounded_int(request.args.get("wait"), default=0, low=0, high=settings.max_wait_seconds,
                             code="invalid_wait", name="wait")
    # Whose task it is is settled before any waiting: another key's task is a 404 at once.
    record = store.get_task(task_id)
    if record is None or not may_read_record(record):
        raise _task_not_found(task_id)
    waited = True
    if wait and record["state"] not in FINISHED_STATES:
        waited, latest = _wait_for(task_id, wait)
        if waited and latest is None:  # expired while waited on
            raise _task_not_found(task_id)
        record = latest or record
    response = jsonify(task_resource(record))
    if not waited and record["state"] not in FINISHED_STATES:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)  # answered without waiting: busy
    return response


def _task_not_found(task_id: str) -> LookalikeError:
    return LookalikeError("task_not_found", "No such task; task records expire after "
                          f"{_context()['settings'].task_ttl_seconds} seconds.", {"task_id": task_id[:100]})


@blueprint.get("/v1/batches/<batch_id>")
@spec.validate(resp=responses({"HTTP_200": Batch}, 404), tags=["tasks"], skip_validation=True)
def get_batch(batch_id: str):
    """Progress of a bulk upload: counts per state and each item's state."""
    store = _context()["store"]
    batch = store.get_batch(batch_id)
    if batch is None or not may_read_record(batch):
        raise LookalikeError("batch_not_found", "No such batch; batch records expire with their tasks.",
                             {"batch_id": batch_id[:100]})
    task_ids = [item["task_id"] for item in batch["items"] if item["task_id"]]
    outcomes = dict(zip(task_ids, store.task_outcomes(task_ids)))
    items, counts = [], Counter()
    for item in batch["items"]:
        if item["task_id"] is None:
            state, error = "rejected", item["error"]
        else:
            state, error = outcomes[item["task_id"]]
            state = state or "expired"
        counts[state] += 1
        items.append({"image_id": item["image_id"], "task_id": item["task_id"], "state": state, "error": error})
    return jsonify({
        "batch_id": batch_id,
        "collection": batch["collection"],
        "submitted_at": batch["submitted_at"],
        "total": len(items),
        "counts": {state: counts[state] for state in (QUEUED, RUNNING, *FINISHED_STATES, "rejected", "expired")},
        "finished": counts[QUEUED] + counts[RUNNING] == 0,
        "items": items,
    })


@blueprint.get("/v1/collections/<collection>/images/<path:image_id>")
@spec.validate(resp=responses({"HTTP_200": Image}, 400, 404), tags=["images"], skip_validation=True)
def get_image(collection: str, image_id: str):
    image = _context()["store"].get_image(validate_collection_name(collection), validate_image_id(image_id))
    if image is None:
        raise _image_not_found(collection, image_id)
    return jsonify(image)


@blueprint.get("/v1/collections/<collection>/thumbnails/<path:image_id>")
@spec.validate(resp=responses({"HTTP_200": None}, 400, 404), tags=["images"], skip_validation=True)
def get_thumbnail(collection: str, image_id: str):
    """A small JPEG of the image (``LOOKALIKE_THUMBNAIL_SIZE`` px a side), kept at index time."""
    thumbnail = _context()["store"].get_thumbnail(validate_collection_name(collection), validate_image_id(image_id))
    if thumbnail is None:
        raise LookalikeError("thumbnail_not_found", "No thumbnail for this id: no such image, indexed from a "
                             "vector, or thumbnails are off.", {"collection": collection, "id": image_id})
    response = FlaskResponse(thumbnail, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


@blueprint.get("/")
@spec.validate(resp=Response(HTTP_200=None), tags=["web"], security={}, skip_validation=True)
def home():
    """The web page: pick a collection, drop an image, see the ranked matches."""
    # Read, not streamed with send_from_directory: spectree's wrapper reads the body.
    return FlaskResponse((Path(__file__).parent / "static" / "index.html").read_bytes(), mimetype="text/html")


@blueprint.delete("/v1/collections/<collection>/images/<path:image_id>")
@spec.validate(resp=responses({"HTTP_200": Deleted}, 400, 404), tags=["images"], skip_validation=True)
def delete_image(collection: str, image_id: str):
    written: dict[int, int] = {}
    if not _context()["store"].delete_image(validate_collection_name(collection), validate_image_id(image_id),
                                            written=written):
        raise _image_not_found(collection, image_id)
    return jsonify({"id": image_id, "deleted": True, "write_token": write_token(written)})


def _image_not_found(collection: str, image_id: str) -> LookalikeError:
    return LookalikeError("image_not_found", "No image with this id in this collection.",
                          {"collection": collection, "id": image_id})


@blueprint.get("/v1/collections")
@spec.validate(resp=responses({"HTTP_200": CollectionList}), tags=["collections"], skip_validation=True)
def list_collections():
    """The collections the caller's key may use, by name."""
    names = [name for name in _context()["store"].list_collections() if may_see_collection(name)]
    return jsonify({"collections": names})


@blueprint.get("/v1/collections/<collection>/images")
@spec.validate(query=PageQuery, resp=responses({"HTTP_200": ImageIds}, 400), tags=["collections"],
               skip_validation=True)
def list_images(collection: str):
    """A page of a collection's image ids (``?cursor=`` from the last page; ``next_cursor`` null at the end)."""
    collection = validate_collection_name(collection)
    cursor = parse_bounded_int(request.args.get("cursor"), default=0, low=0, high=2**63 - 1, code="invalid_cursor",
                               name="cursor", max_digits=19)
    limit = parse_bounded_int(request.args.get("limit"), default=1000, low=1, high=10_000, code="invalid_limit",
                              name="limit")
    next_cursor, ids = _context()["store"].list_image_ids(collection, cursor, limit)
    return jsonify({"collection": collection, "ids": ids, "next_cursor": next_cursor or None})


@blueprint.delete("/v1/collections/<collection>")
@spec.validate(resp=responses({"HTTP_200": CollectionDropped}, 400, 404), tags=["collections"], skip_validation=True)
def drop_collection(collection: str):
    """Delete a whole collection: images, vectors, hashes, thumbnails and settings (scope ``admin``).

    How a collection changes descriptor: vectors of different descriptors never mix, so it
    is emptied and indexed again.
    """
    store = _context()["store"]
    collection = validate_collection_name(collection)
    if store.collection_info(collection) is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    return jsonify({"collection": collection, "deleted": True, "images": store.drop_collection(collection)})


@blueprint.get("/v1/collections/<collection>")
@spec.validate(resp=responses({"HTTP_200": CollectionInfo}, 400, 404), tags=["collections"], skip_validation=True)
def get_collection(collection: str):
    info = _context()["store"].collection_info(validate_collection_name(collection))
    if info is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    return jsonify(info)


@blueprint.get("/v1/collections/<collection>/buckets")
@spec.validate(resp=responses({"HTTP_200": BucketPlacement}, 400, 404), tags=["collections"], skip_validation=True)
def get_buckets(collection: str):
    """Which search group holds each of the collection's buckets, and the buckets moving (scope ``admin``)."""
    return jsonify(_placement(validate_collection_name(collection)))


@blueprint.put("/v1/collections/<collection>/buckets/<bucket>")
@spec.validate(json=BucketMove, resp=responses({"HTTP_202": BucketPlacement}, 400, 404, 409), tags=["collections"],
               skip_validation=True)
def move_bucket(collection: str, bucket: str):
    """Move one bucket of a collection to another search group (scope ``admin``): the group loads it, then
    queries go there, then the old group lets go; no query fails or comes back short meanwhile. Moving it
    back, or elsewhere, while it moves starts the move over."""
    store, groups = _context()["store"], _context()["settings"].search_groups
    collection = validate_collection_name(collection)
    body = _json_body("invalid_bucket_move")
    if not isinstance(body, dict) or set(body) != {"group"} or body["group"] not in groups:
        raise LookalikeError("invalid_bucket_move", f"Send {{\"group\": ...}} naming one of the search groups "
                             f"{list(groups)}.", {"groups": list(groups)})
    current = _placement(collection)
    number = int(bucket) if bucket.isascii() and bucket.isdigit() and len(bucket) <= 5 else -1
    if current["buckets"] == 1:
        raise LookalikeError("collection_not_sharded", "A collection of one bucket is placed by its group setting "
                             "(PUT /v1/collections/{collection}).", {"collection": collection})
    if not 0 <= number < current["buckets"]:
        raise LookalikeError("bucket_not_found", "No such bucket: they are numbered from 0.",
                             {"buckets": current["buckets"], "bucket": bucket[:10]})
    if number in current["placement"].get(body["group"], []) and str(number) not in current["moving"]:
        return jsonify(current), 202  # there already
    store.start_move(collection, number, body["group"])
    return jsonify(_placement(collection)), 202


def _placement(collection: str) -> dict:
    store = _context()["store"]
    info = store.collection_info(collection)
    if info is None:
        raise LookalikeError("collection_not_found", "Nothing was ever indexed into this collection.",
                             {"collection": collection})
    buckets = info["settings"]["buckets"]
    placement = bucket_groups(collection, info["settings"], buckets, _context()["settings"].search_groups,
                              store.placement_overrides(collection))
    return {"collection": collection, "buckets": buckets, "placement": placement,
            "moving": {str(bucket): group for bucket, group in sorted(store.moves(collection).items())}}


# --- Health -------------------------------------------------------------------------------


@blueprint.get("/metrics")
@spec.validate(resp=responses({"HTTP_200": None}), tags=["health"], skip_validation=True)
def metrics():
    """Prometheus metrics of the API (needs the ``metrics`` scope when keys are on); per-collection series
    only of the collections the key may use."""
    return metrics_response(may_see_collection)


@blueprint.get("/healthz")
@spec.validate(resp=Response(HTTP_200=Health), tags=["health"], security={}, skip_validation=True)
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
@spec.validate(query=ReadyQuery, resp=Response(HTTP_200=Ready, HTTP_503=Error), tags=["health"], security={},
               skip_validation=True)
def readyz():
    """Whether this API process can answer: ready while Redis answers. With no worker alive the API still
    answers everything that needs none (results, images, settings; submissions wait in the queue), so it
    stays in the load balancer: ``status`` says ``degraded``. ``?workers=1`` asks for the whole service:
    ``503 not_ready`` until a worker with its model loaded has reported in."""
    settings, store = _context()["settings"], _context()["store"]
    need_workers = parse_flag(request.args.get("workers"), code="invalid_workers", name="workers")
    store.redis.ping()  # a connection error becomes 503 store_unavailable
    workers = store.live_workers(max_age_seconds=3 * settings.heartbeat_seconds)
    if not workers and need_workers:
        raise LookalikeError("not_ready", "No worker with a loaded model has reported in.",
                             {"redis": "ok", "workers": []})
    weights = sorted({worker["weights"] for worker in workers})
    body = {"status": "ready" if workers else "degraded", "redis": "ok", "weights": weights, "workers": workers}
    if not workers:
        body["warning"] = "No worker with a loaded model has reported in: submitted tasks wait in the queue."
    elif any(worker["random_weights"] for worker in workers):
        body["warning"] = "RANDOM weights in use: similarity scores do not reflect image content. Tests and smoke runs only."
    return jsonify(body)

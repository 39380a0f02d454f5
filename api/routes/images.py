"""Images of a collection: indexing one (upload or URL) or a batch, storing precomputed vectors or banked PDQ
hashes, reading an image's record or thumbnail, and deleting it."""

import uuid
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from flask import Response as FlaskResponse

from api.auth import submitter
from api.openapi import (
    Accepted,
    BatchAccepted,
    BatchForm,
    Deleted,
    HashesRequest,
    HashesStored,
    Image,
    IndexForm,
    VectorsRequest,
    VectorsStored,
    responses,
    spec,
)
from api.routes.common import (
    _accepted,
    _callback_from_form,
    _context,
    _enqueue,
    _image_or_url,
    _json_body,
    _read_image,
)
from shared.errors import LookalikeError
from shared.inputs import (
    MAX_JSON_DEPTH,
    parse_aligned_array,
    validate_collection_name,
    validate_image_id,
    validate_metadata,
)
from shared.perceptual_hashes import parse_pdq_hash
from shared.queue import INDEX_TASK
from shared.store import Descriptor, utc_now
from shared.vectors import VECTOR_DIMENSION, parse_vector
from shared.write_tokens import write_token

blueprint = Blueprint("images", __name__)


@blueprint.post("/v1/collections/<collection>/images")
@spec.validate(form=IndexForm, resp=responses({"HTTP_202": Accepted}, 400, 409, 413, 415, 422), tags=["images"],
               skip_validation=True)
def index_image(collection: str):
    """Index one image, uploaded as ``image`` or fetched by the worker from ``url``."""
    collection = validate_collection_name(collection)
    form = IndexForm.read(request.form, _context()["settings"])  # every field, checked as IndexForm declares it
    image_id = form["id"] if form["id"] is not None else uuid.uuid4().hex
    callback = _callback_from_form(form["callback_url"])
    upload, url = _image_or_url(form["url"])
    [task_id] = _enqueue_index(collection, [(image_id, form["metadata"], upload)], url=url, callback=callback)
    return _accepted({"task_id": task_id, "image_id": image_id}, url_for("tasks.get_task", task_id=task_id))


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
    store = _context()["store"]
    items = _items(body, collection, "vectors", '{"items": [{"id", "vector", "metadata"}, ...]}')
    descriptor = _descriptor_for_vectors(collection, body)
    vectors = _checked_items(items, settings.max_metadata_bytes,
                             lambda item: parse_vector(item.get("vector"), descriptor.dimension))
    checked = [(image_id, vector, metadata, None, None)  # no image, so no PDQ hash or thumbnail
               for image_id, vector, metadata in vectors]
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
    store = _context()["store"]
    items = _items(body, collection, "hashes", '{"items": [{"id", "hash", "quality", "metadata"}, ...]}')
    hashes = _checked_items(items, settings.max_metadata_bytes,
                            lambda item: parse_pdq_hash(item.get("hash"), item.get("quality")))
    checked = [(image_id, None, metadata, pdq_hash.encode(), None)  # no image: no vector, no thumbnail
               for image_id, pdq_hash, metadata in hashes]
    written: dict[int, int] = {}
    replaced = store.save_images(collection, checked, None, written=written)
    return jsonify({"collection": collection, "stored": len(checked), "replaced": replaced,
                    "write_token": write_token(written)}), 201


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


def _items(body, collection: str, what: str, shape: str) -> list:
    """The ``items`` of a JSON body storing vectors or hashes, refused when malformed or too many, and only when
    the store has room for them."""
    settings, store = _context()["settings"], _context()["store"]
    if not isinstance(body, dict) or not isinstance(body.get("items"), list) or not body["items"]:
        raise LookalikeError("invalid_json", f"Send a JSON object {shape}.")
    items = body["items"]
    if len(items) > settings.max_vectors_per_request:
        raise LookalikeError(f"too_many_{what}", f"At most {settings.max_vectors_per_request} {what} per request.",
                             {"max_items": settings.max_vectors_per_request, "received": len(items)})
    store.check_room_for_images(settings.store_full_ratio, collection)
    return items


def _checked_items(items: list, max_metadata_bytes: int, parse_value) -> list[tuple[str, Any, dict]]:
    """``(id, value, metadata)`` of every item, each checked before any is written: its id (unique in the
    request), its value (``parse_value(item)``: a vector, a hash) and its metadata; the first bad item refuses
    the request, its position in ``details.item``."""
    checked, seen_ids = [], set()
    for position, item in enumerate(items):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise LookalikeError("invalid_image_id", "Each item needs an 'id' string.")
            image_id = validate_image_id(item["id"])
            if image_id in seen_ids:
                raise LookalikeError("duplicate_image_id", "This id appears earlier in the same request.")
            seen_ids.add(image_id)
            value = parse_value(item)
            metadata = validate_metadata(item.get("metadata", {}), max_metadata_bytes)
        except LookalikeError as error:
            error.details = {"item": position, **error.details}
            raise
        checked.append((image_id, value, metadata))
    return checked


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
    form = BatchForm.read(request.form, settings)  # every field, as BatchForm declares it
    callback = _callback_from_form(form["callback_url"])
    files = request.files.getlist("image")
    if not files:
        raise LookalikeError("image_missing", "Send the images as multipart/form-data file fields named 'image'.")
    if len(files) > settings.max_batch_files:
        raise LookalikeError("batch_too_large", f"At most {settings.max_batch_files} images per batch.",
                             {"max_files": settings.max_batch_files, "received": len(files)})
    ids = parse_aligned_array(form["ids"], len(files), code="invalid_ids", name="ids")
    metadata = parse_aligned_array(form["metadata"], len(files), code="invalid_metadata", name="metadata")

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
    return _accepted(body, url_for("tasks.get_batch", batch_id=batch_id))


def _check_batch_item(image_id, metadata, file, seen_ids: set[str]) -> tuple[str, dict, bytes]:
    """One bulk-upload item as ``(image_id, metadata, upload)``, or the error that rejects it."""
    if not isinstance(image_id, str):
        raise LookalikeError("invalid_image_id", "Image ids must be strings.")
    validate_image_id(image_id)
    if image_id in seen_ids:
        raise LookalikeError("duplicate_image_id", "This id appears earlier in the same batch.")
    metadata = validate_metadata(metadata, _context()["settings"].max_metadata_bytes)
    return image_id, metadata, _read_image(file)


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

"""What several resources' routes share: the app's context, each route's body limits (set by a hook before
anything reads the body), the one JSON body parser, waiting on a task, the image of a submission (upload or
URL) and its webhook, and enqueueing tasks with the 202 that answers them."""

import uuid

from flask import current_app, g, jsonify, request

from api.auth import submitter
from shared import logs
from shared.errors import LookalikeError
from shared.images import inspect_image
from shared.inputs import parse_json
from shared.outbound import Allowlist, check_url
from shared.queue import TASK_KINDS, TASK_QUEUES
from shared.task_records import CALLBACK_PENDING

FORM_OVERHEAD_BYTES = 256 * 1024
# A 512-d vector as a JSON array of floats (or a hash), with its id and metadata, stays well under this.
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
    if request.endpoint in ("images.index_image", "queries.query_image", "queries.check_image"):
        request.max_content_length = single_upload  # the image and the form fields around it
    elif request.endpoint == "images.index_batch":
        request.max_content_length = settings.max_batch_bytes
        request.max_form_memory_size = settings.max_batch_files * settings.max_metadata_bytes + FORM_OVERHEAD_BYTES
    elif request.endpoint in ("images.store_vectors", "images.store_hashes"):
        request.max_content_length = settings.max_vectors_per_request * VECTOR_REQUEST_BYTES_PER_ITEM


def _json_body(code: str, **options):
    """The request's JSON body through the one JSON parser (shared.inputs.parse_json); None when the request
    is not JSON. Refused with ``code``: malformed, too deep, or (unless allowed) NaN or Infinity."""
    if not request.is_json:
        return None
    return parse_json(request.get_data(cache=True), code, "body", **options)


def _wait_for(task_id: str, wait: int) -> tuple[bool, dict | None]:
    """Whether the request could wait (the API's bounds on waiting requests, api/waits.py: with no slot free,
    not at all), and the task once it finishes within ``wait`` seconds, or as it stands then (None: expired)."""
    key = g.get("api_key")
    caller = f"key:{key.key_id}" if key is not None else f"addr:{request.remote_addr}"
    with _context()["wait_slots"].slot(caller) as waited:
        return waited, (_context()["store"].wait_for_task(task_id, wait) if waited else None)


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


def _image_or_url(url: str | None) -> tuple[bytes | None, str | None]:
    """The request's image: uploaded bytes (checked), or a URL on the fetch allow list for the worker to fetch."""
    if url is None:
        return _read_image(request.files.get("image")), None
    if "image" in request.files:
        raise LookalikeError("ambiguous_image_input", "Send either an 'image' file or a 'url', not both.")
    settings = _context()["settings"]
    check_url(url, Allowlist(settings.fetch_allowlist), invalid_code="invalid_url", refused_code="url_not_allowed",
              what="image URL")
    return None, url


def _callback_from_form(url: str | None) -> dict | None:
    """The webhook of a submission (its ``callback_url``), refused unless webhooks are set up and its host is
    allowed."""
    if url is None:
        return None
    settings = _context()["settings"]
    key = g.get("api_key")
    if key is not None and key.webhook_secret is None:  # signed with the key's own secret (worker/webhooks.py)
        raise LookalikeError("callback_not_allowed", "This API key has no webhook secret (it predates per-key "
                             "secrets): an operator gives it one with "
                             f"`python -m api.manage_keys webhook-secret {key.key_id}`.",
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
            celery.send_task(task_name, kwargs={"task_id": task_id, **kwargs}, task_id=task_id,
                             queue=TASK_QUEUES[task_name])
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

"""Queries and checks of a collection: by image (upload or URL), vector or PDQ hash, answered by a task, or in
the answer itself when the caller waits for it (``Prefer: wait=N``)."""

import re

from flask import Blueprint, jsonify, request, url_for

from api.auth import may_see_collection
from api.openapi import Accepted, CheckForm, QueryForm, Task, responses, spec
from api.routes.common import _accepted, _callback_from_form, _context, _enqueue, _image_or_url, _wait_for
from shared.errors import LookalikeError
from shared.inputs import validate_collection_name
from shared.matching import CNN, PDQ, parse_signals
from shared.perceptual_hashes import PdqHash
from shared.queue import CHECK_TASK, QUERY_TASK
from shared.store import REDIS_UNAVAILABLE, encode_vector
from shared.task_records import FINISHED_STATES, task_resource
from shared.vectors import VECTOR_DIMENSION, parse_vector_field

blueprint = Blueprint("queries", __name__)


@blueprint.post("/v1/collections/<collection>/queries")
@spec.validate(form=QueryForm, resp=responses({"HTTP_202": Accepted, "HTTP_200": Task}, 400, 409, 413, 415, 422),
               tags=["queries"],
               skip_validation=True)
def query_image(collection: str):
    """Rank the collection against an uploaded ``image``, a ``url``, a ``vector`` or a PDQ ``hash``.

    ``expand`` (0-10): average query expansion -- the query is averaged with that many of its
    best CNN matches and searched again.
    """
    collection = validate_collection_name(collection)
    form = QueryForm.read(request.form, _context()["settings"])  # every field, checked as QueryForm declares it
    return _submit_query(QUERY_TASK, collection, form, k=form["k"], min_score=form["min_score"],
                         extra={"expand": form["expand"]} if form["expand"] else None)


@blueprint.post("/v1/collections/<collection>/checks")
@spec.validate(form=CheckForm, resp=responses({"HTTP_202": Accepted, "HTTP_200": Task}, 400, 409, 413, 415, 422),
               tags=["queries"],
               skip_validation=True)
def check_image(collection: str):
    """Is this image (or vector, or hash) a near-duplicate of anything in the collection? A verdict and the best
    match.

    ``allow_collections`` (a JSON array of names) are consulted when the verdict would be
    ``block``: a near-duplicate there turns it into ``allow``.
    """
    collection = validate_collection_name(collection)
    form = CheckForm.read(request.form, _context()["settings"])  # every field, checked as CheckForm declares it
    for allowed in form["allow_collections"]:
        if not may_see_collection(allowed):
            raise LookalikeError("forbidden", "This API key may not use this collection.", {"collection": allowed})
    extra = {"allow_collections": form["allow_collections"]} if form["allow_collections"] else {}
    return _submit_query(CHECK_TASK, collection, form, k=1, min_score=None, extra=extra)


def _submit_query(task_name: str, collection: str, form: dict, *, k: int, min_score: float | None,
                  extra: dict | None = None):
    """Queue a query or check of ``collection`` from its read ``form``: by image (uploaded or by URL), vector or
    hash -- one of them -- with the signals each allows (default both: a vector has no hash, a hash no vector)."""
    vector, pdq_bits = form["vector"], form["hash"]
    signals = parse_signals(form["signals"], "both")
    fields = {"collection": collection, "k": k, "min_score": min_score, "filter": form["filter"],
              "signals": list(signals), **(extra or {})}
    if form["write_token"]:  # (JSON keys are strings)
        fields["fresh"] = {str(bucket): seq for bucket, seq in form["write_token"].items()}
    if form["partial"]:
        fields["partial"] = True
    callback = _callback_from_form(form["callback_url"])
    wait = _preferred_wait()
    given = [name for name, present in (("image", "image" in request.files), ("url", form["url"] is not None),
                                        ("vector", vector is not None), ("hash", pdq_bits is not None)) if present]
    if len(given) > 1 and given != ["image", "url"]:  # (an image and a URL: _image_or_url says so)
        raise LookalikeError("ambiguous_query_input", "Send one of an 'image' file, a 'url', a 'vector' or a 'hash'.",
                             {"received": given})
    if vector is not None:
        if CNN not in signals or form["signals"] == "both":
            raise LookalikeError("signal_unavailable", "A query by vector has no PDQ hash: use signals=cnn.",
                                 {"signals": list(signals)})
        query_input, url = encode_vector(parse_vector_field(vector, _collection_dimension(collection))), None
    elif pdq_bits is not None:
        if form["signals"] not in (None, "pdq"):
            raise LookalikeError("signal_unavailable", "A query by hash has no CNN vector: use signals=pdq.",
                                 {"signals": list(signals)})
        fields["signals"] = [PDQ]
        query_input, url = PdqHash(pdq_bits, form["hash_quality"]).encode(), None
    else:
        query_input, url = _image_or_url(form["url"])
    if url is not None:
        fields["url"] = url
    kwargs = fields | {"by_vector": vector is not None} | ({"by_hash": True} if pdq_bits is not None else {})
    if callback is not None:
        fields["callback"] = callback
    [task_id] = _enqueue(task_name, [(fields, kwargs, query_input)])
    status_url = url_for("tasks.get_task", task_id=task_id)
    if wait:  # Prefer: wait=N -- the result in this answer when the task finishes in time
        try:
            _, record = _wait_for(task_id, wait)
        except REDIS_UNAVAILABLE:  # the task is queued: say so (202), never a 503 that invites submitting it again
            record = None
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


def _collection_dimension(collection: str) -> int:
    info = _context()["store"].collection_info(collection)
    return info["dimension"] if info and info["dimension"] else VECTOR_DIMENSION

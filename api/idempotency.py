"""``Idempotency-Key`` on POST requests: a repeat within the TTL gets the original response.

Upload pipelines retry on timeouts; with a key, a retry of a request that did go through
returns its first answer (the same task id) instead of queueing the work twice. The key
is scoped to the caller's API key. The request is fingerprinted by its parsed content
(form fields, uploaded files' hashes, JSON), not its raw bytes, because multipart
boundaries differ between two sends of the same request; the same key with a different
request is refused (422 ``idempotency_key_reused``).

Only successful (2xx) responses are remembered: after an error the same key may be used
again, with the request fixed. While the first request is still being answered, a repeat
gets 409 ``idempotency_key_in_progress``.
"""

import hashlib
import json

from flask import Flask, Response, current_app, g, request

from shared import keys
from shared.errors import LookalikeError
from shared.inputs import MAX_JSON_DEPTH, parse_json

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# How long a key is held while its first request is answered; a crashed API process frees it after this.
IN_PROGRESS_SECONDS = 60


def register_idempotency(app: Flask) -> None:
    app.before_request(replay_or_reserve)
    app.after_request(remember_response)
    app.teardown_request(release_unfinished)


def replay_or_reserve() -> Response | None:
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None or request.endpoint is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise LookalikeError("invalid_idempotency_key",
                             f"'{HEADER}' must be 1-{MAX_KEY_CHARS} printable ASCII characters.")
    redis_client = current_app.extensions["lookalike"]["store"].redis
    api_key = g.get("api_key")
    record_key = keys.idempotency(api_key.key_id if api_key else "anonymous", hashlib.sha256(key.encode()).hexdigest())
    fingerprint = _fingerprint()
    for _ in range(2):  # a record that expires between SET NX and GET: try once more
        if redis_client.set(record_key, json.dumps({"fingerprint": fingerprint, "state": "in_progress"}),
                            nx=True, ex=IN_PROGRESS_SECONDS):
            g.idempotency = (record_key, fingerprint)
            return None
        stored = redis_client.get(record_key)
        if stored is not None:
            return _replay(json.loads(stored), fingerprint)
    raise LookalikeError("idempotency_key_in_progress", "A request with this key is being answered; retry shortly.")


def _replay(stored: dict, fingerprint: str) -> Response:
    if stored["fingerprint"] != fingerprint:
        raise LookalikeError("idempotency_key_reused", f"This '{HEADER}' was used for a different request; use a new "
                             "key for a new request.")
    if stored["state"] != "done":
        raise LookalikeError("idempotency_key_in_progress", "A request with this key is being answered; retry shortly.")
    response = Response(stored["body"], status=stored["status"], mimetype="application/json")
    if stored.get("location"):
        response.headers["Location"] = stored["location"]
    response.headers[REPLAYED_HEADER] = "true"
    return response


def remember_response(response: Response) -> Response:
    reserved = g.pop("idempotency", None)
    if reserved is None:
        return response
    record_key, fingerprint = reserved
    redis_client = current_app.extensions["lookalike"]["store"].redis
    if 200 <= response.status_code < 300:
        record = {"fingerprint": fingerprint, "state": "done", "status": response.status_code,
                  "body": response.get_data(as_text=True), "location": response.headers.get("Location")}
        ttl = current_app.extensions["lookalike"]["settings"].idempotency_ttl_seconds
        redis_client.set(record_key, json.dumps(record), ex=ttl)
    else:
        redis_client.delete(record_key)
    return response


def release_unfinished(_error: BaseException | None) -> None:
    """Free a key whose request ended without a response (after_request did not run)."""
    reserved = g.pop("idempotency", None)
    if reserved is not None:
        try:
            current_app.extensions["lookalike"]["store"].redis.delete(reserved[0])
        except Exception:  # noqa: BLE001 - Redis away: the reservation expires by itself
            pass


def _nameless_first(field: tuple) -> tuple:
    """Sort key for form fields and files: a part without a name (Werkzeug keys it None) sorts first."""
    return tuple((value is not None, value or "") for value in field)


def _fingerprint() -> str:
    """A hash of what the request asks for: route, query string and parsed body."""
    content: dict = {"method": request.method, "path": request.path,
                     "args": sorted(request.args.items(multi=True), key=_nameless_first)}
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        content["form"] = sorted(request.form.items(multi=True), key=_nameless_first)
        files = []
        for name, file in request.files.items(multi=True):
            digest = hashlib.sha256(file.read()).hexdigest()
            file.seek(0)  # the view reads it again
            files.append((name, file.filename, digest))
        content["files"] = sorted(files, key=_nameless_first)
    else:
        body = None
        if request.is_json:
            try:  # the one JSON parser, as the views use it: no depth can break it (the view refuses what it must)
                body = parse_json(request.get_data(cache=True), "invalid_json", "body", max_depth=MAX_JSON_DEPTH + 3,
                                  allow_non_finite=True)
            except LookalikeError:
                body = None
        content["body"] = body if body is not None else hashlib.sha256(request.get_data()).hexdigest()
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

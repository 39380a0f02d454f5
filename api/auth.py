"""Every request needs an API key with the right scope, except health checks (and unknown routes' 404s).

Endpoints not listed in ``SCOPE_OF`` need ``admin`` (collection settings, for one): a new
route is closed until given a scope. Tasks and batches belong to the key that submitted
them (``OWNER``): any valid key may ask, but only that key or an admin key gets an answer
other than 404 (the views check, with :func:`may_read_record`).

Failed authentications are counted per client address (``LOOKALIKE_AUTH_FAILURE_LIMIT``,
with the storage of the rate limits); an address past its budget is answered 429
``rate_limited`` before its key is even looked at, until the window ends.
"""

import math
import time

from flask import Flask, current_app, g, request
from limits import parse as parse_limit
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from shared.apikeys import KeyStore
from shared.errors import LookalikeError
from shared.redis_client import limits_storage_uri

# The web page itself is open; what it shows comes from API calls made with the key typed into it.
OPEN = {"health.healthz", "health.readyz", "web.home", "openapi_json", "openapi_docs", "openapi_assets"}
OWNER = "owner"  # tasks and batches: any valid key may ask; the view answers only their submitter (or admin)
SCOPE_OF = {
    "images.index_image": "index",
    "images.index_batch": "index",
    "images.store_vectors": "index",
    "images.store_hashes": "index",
    "images.delete_image": "index",
    "queries.query_image": "query",
    "queries.check_image": "query",
    "tasks.get_task": OWNER,
    "tasks.get_batch": OWNER,
    "images.get_image": "read",
    "images.get_thumbnail": "read",
    "collections.get_collection": "read",
    "collections.list_collections": "read",
    "collections.list_images": "read",
    "health.metrics": "metrics",
}
AUTH_FAILURES = "lookalike-auth-failures"  # the limits package's namespace for failed authentications


class AuthFailures:
    """Failed authentications per client address, counted in a fixed window (the ``limits`` package)."""

    def __init__(self, storage_uri: str, limit: str):
        self.limit = parse_limit(limit)
        self.limiter = FixedWindowRateLimiter(storage_from_string(storage_uri))

    def refuse_if_over(self, address: str) -> None:
        if not self.limiter.test(self.limit, AUTH_FAILURES, address):
            reset = self.limiter.get_window_stats(self.limit, AUTH_FAILURES, address).reset_time
            retry_after = max(1, math.ceil(reset - time.time()))
            raise LookalikeError("rate_limited", "Too many failed authentications from this address; retry later.",
                                 {"retry_after": retry_after})

    def count(self, address: str) -> None:
        self.limiter.hit(self.limit, AUTH_FAILURES, address)


def register_auth(app: Flask) -> None:
    settings = app.extensions["lookalike"]["settings"]
    if settings.auth and settings.auth_failure_limit:
        app.extensions["lookalike"]["auth_failures"] = AuthFailures(limits_storage_uri(settings),
                                                                    settings.auth_failure_limit)
    app.before_request(require_api_key)


def require_api_key() -> None:
    context = current_app.extensions["lookalike"]
    if not context["settings"].auth or request.endpoint is None or request.endpoint in OPEN:
        return
    failures: AuthFailures | None = context.get("auth_failures")
    address = request.remote_addr or "unknown"
    if failures is not None:
        failures.refuse_if_over(address)
    try:
        key = KeyStore(context["store"].redis).authenticate(request.headers.get("Authorization"))
    except LookalikeError:
        if failures is not None:
            failures.count(address)
        raise
    scope = SCOPE_OF.get(request.endpoint, "admin")
    if scope != OWNER and not key.allows(scope):
        raise LookalikeError("forbidden", f"This API key lacks the '{scope}' scope.", {"scopes": key.scopes})
    collection = (request.view_args or {}).get("collection")
    if collection is not None and not key.allows_collection(collection):
        raise LookalikeError("forbidden", "This API key may not use this collection.", {"collection": collection[:100]})
    g.api_key = key


def may_see_collection(collection: str | None) -> bool:
    """Whether the caller's key may use ``collection`` (always, with keys off)."""
    key = g.get("api_key")
    return key is None or collection is None or key.allows_collection(collection)


def may_read_record(record: dict) -> bool:
    """Whether the caller may read a task or batch record: the key that submitted it, or an admin key (anyone
    with keys off). Records submitted with keys off belong to no key: only admin keys read them."""
    key = g.get("api_key")
    if key is None or key.is_admin:
        return True
    return record.get("api_key_id") == key.key_id and may_see_collection(record.get("collection"))


def submitter() -> str | None:
    """The id of the key making this request, kept on the records it creates (None with keys off)."""
    key = g.get("api_key")
    return key.key_id if key is not None else None

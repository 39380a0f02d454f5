"""Every request needs an API key with the right scope, except health checks (and unknown routes' 404s).

Endpoints not listed in ``SCOPE_OF`` need ``admin`` (collection settings, for one): a new
route is closed until given a scope.
"""

from flask import Flask, current_app, g, request

from api.keys import KeyStore
from shared.errors import LookalikeError

# The web page itself is open; what it shows comes from API calls made with the key typed into it.
OPEN = {"api.healthz", "api.readyz", "api.home", "openapi_json", "openapi_docs", "openapi_assets"}
ANY_SCOPE = "any"  # reading results: any valid key
SCOPE_OF = {
    "api.index_image": "index",
    "api.index_batch": "index",
    "api.store_vectors": "index",
    "api.delete_image": "index",
    "api.query_image": "query",
    "api.check_image": "query",
    "api.get_task": ANY_SCOPE,
    "api.get_batch": ANY_SCOPE,
    "api.get_image": ANY_SCOPE,
    "api.get_thumbnail": ANY_SCOPE,
    "api.get_collection": ANY_SCOPE,
    "api.list_collections": ANY_SCOPE,
    "api.list_images": ANY_SCOPE,
    "api.metrics": "metrics",
}


def register_auth(app: Flask) -> None:
    app.before_request(require_api_key)


def require_api_key() -> None:
    context = current_app.extensions["lookalike"]
    if not context["settings"].auth or request.endpoint is None or request.endpoint in OPEN:
        return
    key = KeyStore(context["store"].redis).authenticate(request.headers.get("Authorization"))
    scope = SCOPE_OF.get(request.endpoint, "admin")
    if scope != ANY_SCOPE and not key.allows(scope):
        raise LookalikeError("forbidden", f"This API key lacks the '{scope}' scope.", {"scopes": key.scopes})
    collection = (request.view_args or {}).get("collection")
    if collection is not None and not key.allows_collection(collection):
        raise LookalikeError("forbidden", "This API key may not use this collection.", {"collection": collection[:100]})
    g.api_key = key


def may_see_collection(collection: str | None) -> bool:
    """Whether the caller's key may see a record of ``collection`` (tasks and batches name theirs)."""
    key = g.get("api_key")
    return key is None or collection is None or key.allows_collection(collection)

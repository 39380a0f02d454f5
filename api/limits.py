"""Rate limits per API key (per client address when keys are off), counted in Redis by Flask-Limiter.

One budget per key across every route (Flask-Limiter's application limits, not its
per-route default limits), keyed by the id of the key auth has already checked
(``g.api_key``), never by re-reading the header: however a caller spells
``Authorization``, its requests land in its key's bucket. A caller over its limit gets
``429 rate_limited`` with ``Retry-After``. Health checks are never limited; requests
without a valid key never reach this count (auth refuses them first, and counts them in
its own budget of failures per address: api/auth.py). If Redis cannot be reached,
requests are not refused for that reason (they fail with ``store_unavailable`` where they
need Redis anyway).
"""

from flask import Flask, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from api.auth import OPEN
from shared.redis_client import limits_storage_uri
from shared.settings import Settings


def caller() -> str:
    """The authenticated key's id, else (keys off, or a route without a key) the client address."""
    key = g.get("api_key")
    return f"key:{key.key_id}" if key is not None else f"addr:{get_remote_address()}"


def register_rate_limits(app: Flask, settings: Settings) -> None:
    if not settings.rate_limit:
        return
    Limiter(
        caller,
        app=app,
        application_limits=[settings.rate_limit],
        application_limits_exempt_when=lambda: request.endpoint in OPEN,
        storage_uri=limits_storage_uri(settings),
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
    )

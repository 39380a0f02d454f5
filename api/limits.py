"""Rate limits per API key (per client address when keys are off), counted in Redis by Flask-Limiter.

A caller over its limit gets ``429 rate_limited`` with ``Retry-After``. Health checks are
never limited. If Redis cannot be reached, requests are not refused for that reason
(they fail with ``store_unavailable`` where they need Redis anyway).
"""

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from api.auth import OPEN
from shared.settings import Settings


def caller() -> str:
    """The key id of a ``Bearer lk_<id>_<secret>`` header (checked by auth first), else the client address."""
    parts = request.headers.get("Authorization", "").removeprefix("Bearer ").split("_", 2)
    return f"key:{parts[1]}" if len(parts) == 3 and parts[0] == "lk" else f"addr:{get_remote_address()}"


def register_rate_limits(app: Flask, settings: Settings) -> None:
    if not settings.rate_limit:
        return
    Limiter(
        caller,
        app=app,
        default_limits=[settings.rate_limit],
        default_limits_exempt_when=lambda: request.endpoint in OPEN,
        storage_uri=settings.redis_url,
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
    )

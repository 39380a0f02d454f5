"""Webhook signatures: how Lookalike signs a callback and how a receiver checks one.

The signed message is the ``X-Lookalike-Timestamp`` header's value (unix seconds), a dot,
and the raw request body; ``X-Lookalike-Signature`` is ``sha256=`` and the hex HMAC-SHA256
of that message under ``LOOKALIKE_WEBHOOK_SECRET``. Signing the timestamp lets a receiver
refuse replays of an old delivery; docs/api.md shows a receiver.
"""

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Lookalike-Signature"
TIMESTAMP_HEADER = "X-Lookalike-Timestamp"
TASK_HEADER = "X-Lookalike-Task-Id"
ATTEMPT_HEADER = "X-Lookalike-Attempt"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp_header: str | None, signature_header: str | None, body: bytes,
           tolerance_seconds: float = 300, now: float | None = None) -> bool:
    """True when the signature is ours over this body and the timestamp is within the tolerance."""
    if not timestamp_header or not signature_header or not timestamp_header.isdigit():
        return False
    timestamp = int(timestamp_header)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature_header)

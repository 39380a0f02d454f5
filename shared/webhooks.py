"""Webhook signatures: how Lookalike signs a callback and how a receiver checks one.

The signed message is the ``X-Lookalike-Timestamp`` header's value (unix seconds), a dot,
and the raw request body; ``X-Lookalike-Signature`` is ``sha256=`` and the hex HMAC-SHA256
of that message under ``LOOKALIKE_WEBHOOK_SECRET``. Signing the timestamp lets a receiver
refuse replays of an old delivery; docs/api.md shows a receiver.

Beside it, a delivery may carry a Standard Webhooks signature (https://www.standardwebhooks.com/,
which the ``standardwebhooks`` packages verify): ``webhook-id`` (the same on every attempt of a
delivery), ``webhook-timestamp`` (unix seconds) and ``webhook-signature``: ``v1,`` and the base64
HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{body}"`` under the bytes a ``whsec_`` secret's
base64 decodes to. A few lines of hmac and base64 sign it here; the service needs no package for it.
"""

import base64
import binascii
import hashlib
import hmac
import re
import time

SIGNATURE_HEADER = "X-Lookalike-Signature"
TIMESTAMP_HEADER = "X-Lookalike-Timestamp"
TASK_HEADER = "X-Lookalike-Task-Id"
ATTEMPT_HEADER = "X-Lookalike-Attempt"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"
STANDARD_KEY_BYTES = (24, 64)  # what the specification asks of a secret's random part
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


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


# --- Standard Webhooks -------------------------------------------------------------------------


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` and the standard base64 (``+`` and ``/``; ``=``
    padding optional) of 24 to 64 bytes. ValueError, saying what is wrong but never repeating the secret,
    for anything else: a receiver's library would read another key from it, or none."""
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        raise ValueError(f"it does not start with {STANDARD_SECRET_PREFIX!r}")
    encoded = secret[len(STANDARD_SECRET_PREFIX):]
    if set(encoded) & set("-_"):
        raise ValueError("what follows 'whsec_' is URL-safe base64 ('-' and '_'); Standard Webhooks libraries read "
                         "standard base64 ('+' and '/')")
    if not _BASE64.fullmatch(encoded):
        raise ValueError("what follows 'whsec_' is not standard base64 (A-Z, a-z, 0-9, '+' and '/', "
                         "then at most two '=')")
    unpadded = encoded.rstrip("=")
    try:
        key = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("what follows 'whsec_' is not whole base64 (its length is off by one character)") from None
    low, high = STANDARD_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"it holds {len(key)} bytes; a secret holds {low} to {high} random bytes")
    return key


def standard_secret_of_key(secret: str) -> str | None:
    """The Standard Webhooks secret of an API key's webhook secret: the same bytes in standard base64.

    ``python -m api.manage_keys`` prints a key's secret as ``whsec_`` and URL-safe base64 (``-`` and ``_``), which
    Standard Webhooks libraries do not read; this form they do. A secret already in standard base64 is its
    own form. None when the secret holds no base64 of 24 to 64 bytes (then only today's headers are sent)."""
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        return None
    body = secret[len(STANDARD_SECRET_PREFIX):]
    if set(body) & set("-_") and set(body) & set("+/"):
        return None  # both alphabets: no base64 at all
    body = body.translate(str.maketrans("-_", "+/"))
    try:
        key = standard_key(STANDARD_SECRET_PREFIX + body)
    except ValueError:
        return None
    return STANDARD_SECRET_PREFIX + base64.b64encode(key).decode()


def message_id(task_id: str) -> str:
    """The ``webhook-id`` of a task's delivery: a task has one, so every attempt of it carries the same id and a
    receiver that deduplicates by it sees a retry as the message it already has."""
    return f"msg_{task_id}"


def standard_sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of a delivery signed with ``secret`` (a ``whsec_`` secret)."""
    return {STANDARD_ID_HEADER: msg_id, STANDARD_TIMESTAMP_HEADER: str(timestamp),
            STANDARD_SIGNATURE_HEADER: standard_sign(standard_key(secret), msg_id, timestamp, body)}

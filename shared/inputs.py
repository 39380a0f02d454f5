"""The validation rules for what callers send: names, ids, metadata, JSON, numbers and flags, with their limits.

The API validates with these before enqueueing; the worker trusts payloads that passed.
docs/api.md states the same rules in words. Values with a meaning of their own are parsed
beside it: signals and filters (shared/matching.py), collection settings
(shared/collection_settings.py), write tokens (shared/write_tokens.py), vectors
(shared/vectors.py), PDQ hashes (shared/perceptual_hashes.py).
"""

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from shared.errors import LookalikeError

# --- Caller-supplied names --------------------------------------------------------------
COLLECTION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
IMAGE_ID_MAX_CHARS = 256
# What the form parser puts in place of bytes that are not UTF-8.
REPLACEMENT_CHARACTER = "\ufffd"
MAX_K = 1000
# Deepest nesting of objects and arrays in a JSON value a caller sends (metadata, filters, bodies): 32
# levels, counting the outermost. Deeper JSON is refused, never parsed into a stack overflow or stored to
# break every later answer that carries it.
MAX_JSON_DEPTH = 32
MAX_EXPAND = 10  # best matches a query may be averaged with (query expansion)
MAX_ALLOW_COLLECTIONS = 10


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.fullmatch(name):
        raise LookalikeError(
            "invalid_collection_name",
            "Collection names are 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit.",
            {"collection": name[:100]},
        )
    return name


def validate_image_id(image_id: str) -> str:
    """An image id is 1-256 printable characters that survive a round trip through a URL path.

    Paths such as ``uploads/2026/cat.jpg`` are welcome. Refused: control and other
    non-printable characters, leading or trailing whitespace, and empty, ``.`` or ``..``
    path segments (a leading, trailing or doubled ``/``), which HTTP clients and proxies
    rewrite, so such an image could never be fetched or deleted by its id again.
    """
    problem = None
    if not 1 <= len(image_id) <= IMAGE_ID_MAX_CHARS:
        problem = f"must be 1-{IMAGE_ID_MAX_CHARS} characters long"
    elif not image_id.isprintable() or REPLACEMENT_CHARACTER in image_id:
        problem = "must be valid UTF-8 of printable characters"
    elif image_id != image_id.strip():
        problem = "must not start or end with whitespace"
    elif any(segment in ("", ".", "..") for segment in image_id.split("/")):
        problem = "must not contain empty, '.' or '..' path segments"
    if problem:
        raise LookalikeError("invalid_image_id", f"Image id {problem}.", {"id": image_id[:IMAGE_ID_MAX_CHARS]})
    return image_id


def parse_metadata(raw: str | None, max_bytes: int) -> dict[str, Any]:
    """Parse the optional ``metadata`` form field: a JSON object of at most ``max_bytes``."""
    if raw is None or raw == "":
        return {}
    if len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise LookalikeError("invalid_metadata", f"Metadata is larger than {max_bytes} bytes.",
                             {"max_bytes": max_bytes})
    if REPLACEMENT_CHARACTER in raw:
        raise LookalikeError("invalid_metadata", "Metadata must be valid UTF-8.")
    return validate_metadata(parse_json(raw, "invalid_metadata", "metadata"), max_bytes)


def validate_metadata(value: Any, max_bytes: int) -> dict[str, Any]:
    """One image's metadata: a JSON object whose encoding is at most ``max_bytes``, nested at most
    MAX_JSON_DEPTH deep, with finite numbers only (NaN and Infinity are not JSON)."""
    if not isinstance(value, dict):
        raise LookalikeError("invalid_metadata", "Metadata must be a JSON object.")
    check_json_value(value, "invalid_metadata", "metadata")
    if len(json.dumps(value).encode()) > max_bytes:
        raise LookalikeError("invalid_metadata", f"Metadata is larger than {max_bytes} bytes.",
                             {"max_bytes": max_bytes})
    return value


def parse_aligned_array(raw: str | None, length: int, *, code: str, name: str) -> list[Any] | None:
    """An optional JSON array field with exactly one entry per uploaded file (bulk uploads)."""
    if raw is None or raw == "":
        return None
    value = parse_json(raw, code, name, max_depth=MAX_JSON_DEPTH + 1)  # the array, then each item's own levels
    if not isinstance(value, list) or len(value) != length:
        raise LookalikeError(code, f"'{name}' must be a JSON array with one entry per image ({length}).",
                             {"expected_length": length,
                              "received_length": len(value) if isinstance(value, list) else None})
    return value


def parse_flag(raw: str | None, *, code: str, name: str) -> bool:
    """A true/false field or query parameter (``true``/``1``, ``false``/``0``/empty; left out: false)."""
    if raw is None or raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise LookalikeError(code, f"'{name}' must be true or false.")


def parse_partial(raw: str | None) -> bool:
    """``partial``: whether a query or check of a sharded collection may be answered from the buckets whose
    search groups answered in time (the answer then names those missing)."""
    return parse_flag(raw, code="invalid_partial", name="partial")


def parse_collection_list(raw: str | None, *, name: str) -> list[str]:
    """An optional JSON array of distinct collection names (at most MAX_ALLOW_COLLECTIONS)."""
    if raw is None or raw == "":
        return []
    value = parse_json(raw, "invalid_allow_collections", name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value) \
            or not 1 <= len(value) <= MAX_ALLOW_COLLECTIONS or len(set(value)) != len(value):
        raise LookalikeError("invalid_allow_collections", f"'{name}' must be a JSON array of 1-{MAX_ALLOW_COLLECTIONS} "
                             "distinct collection names.")
    return [validate_collection_name(item) for item in value]


def parse_min_score(raw: str | None) -> float | None:
    """Optional lower bound on cosine similarity, from -1 to 1."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not -1.0 <= value <= 1.0:  # also refuses NaN
        raise LookalikeError("invalid_min_score", "'min_score' must be a number from -1 to 1.", {"min_score": raw[:50]})
    return value


class _NonFiniteConstant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFiniteConstant(name)


def parse_json(raw: str | bytes, code: str, name: str, *, max_depth: int = MAX_JSON_DEPTH,
               allow_non_finite: bool = False) -> Any:
    """Every JSON a caller sends is parsed here: form fields and request bodies alike.

    Refused with ``code`` (a 400): not JSON, nested deeper than ``max_depth``, or holding NaN,
    Infinity or a number too large for a float (1e999), which are not JSON and would make the
    API's own answers invalid JSON. ``allow_non_finite`` lets them through for a body whose
    numbers are checked by their own rules (vectors: 422 vector_not_finite).
    """
    try:
        value = json.loads(raw, parse_constant=None if allow_non_finite else _refuse_constant)
    except _NonFiniteConstant as exc:
        raise LookalikeError(code, f"'{name}' holds {exc}, which JSON does not allow.") from None
    except RecursionError:  # far deeper than any limit: the parser itself gave up
        raise LookalikeError(code, f"'{name}' is nested deeper than {max_depth} levels.",
                             {"max_depth": max_depth}) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise LookalikeError(code, f"'{name}' is not valid JSON: {exc}.") from None
    check_json_value(value, code, name, max_depth=max_depth, allow_non_finite=allow_non_finite)
    return value


def check_json_value(value: Any, code: str, name: str, *, max_depth: int = MAX_JSON_DEPTH,
                     allow_non_finite: bool = False) -> None:
    """Refuse (``code``) a parsed value nested deeper than ``max_depth`` or holding a non-finite number.

    Iterative, so that no depth can exhaust the stack; one pass over the value.
    """
    pending = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            if not allow_non_finite and isinstance(node, float) and not math.isfinite(node):
                raise LookalikeError(code, f"'{name}' holds a number JSON cannot carry (NaN, Infinity or too large).")
            continue
        depth += 1
        if depth > max_depth:
            raise LookalikeError(code, f"'{name}' is nested deeper than {max_depth} levels.", {"max_depth": max_depth})
        for child in children:
            if isinstance(child, (dict, list)) or (not allow_non_finite and isinstance(child, float)
                                                    and not math.isfinite(child)):
                pending.append((child, depth))


def parse_bounded_int(raw: str | None, *, default: int, low: int, high: int, code: str, name: str,
                      max_digits: int = 9) -> int:
    """Parse an integer form or query parameter that must lie in [low, high]."""
    if raw is None or raw == "":
        return default
    if not re.fullmatch(rf"[0-9]{{1,{max_digits}}}", raw.strip()):
        raise LookalikeError(code, f"'{name}' must be a whole number from {low} to {high}.", {name: raw[:50]})
    value = int(raw)
    if not low <= value <= high:
        raise LookalikeError(code, f"'{name}' must be from {low} to {high}.", {name: value})
    return value


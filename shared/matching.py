"""What decides a match and what it means: the signals compared (the CNN vector, the PDQ hash, or both), the
metadata filter a query narrows the collection with, and the verdict a near-duplicate gives."""

from typing import Any

from shared.errors import LookalikeError
from shared.inputs import parse_json

# --- Matching signals: the CNN vector, the PDQ hash, or both ---------------------------------
CNN, PDQ = "cnn", "pdq"
SIGNAL_CHOICES = {"cnn": (CNN,), "pdq": (PDQ,), "both": (CNN, PDQ)}


def parse_signals(raw: str | None, default: str) -> tuple[str, ...]:
    """Which signals decide a match: ``cnn``, ``pdq`` or ``both``."""
    choice = default if raw is None or raw == "" else raw
    if choice not in SIGNAL_CHOICES:
        raise LookalikeError("invalid_signals", f"'signals' must be one of {list(SIGNAL_CHOICES)}.",
                             {"signals": str(raw)[:50]})
    return SIGNAL_CHOICES[choice]


def verdict(kind: str, near_duplicate: bool) -> str:
    """What a match means for the caller: a near-duplicate of a block list blocks, of an allow list allows."""
    return kind if near_duplicate else "none"


def parse_filter(raw: str | None) -> dict[str, Any]:
    """Optional metadata filter: a JSON object of field -> value, all of which must be equal."""
    if raw is None or raw == "":
        return {}
    value = parse_json(raw, "invalid_filter", "filter")
    scalar = (str, int, float, bool, type(None))
    if not isinstance(value, dict) or not all(isinstance(v, scalar) for v in value.values()):
        raise LookalikeError("invalid_filter", "'filter' must be a JSON object of field names to strings, numbers, "
                             "booleans or null, e.g. {\"tenant\": \"42\"}.")
    return value


def matches_filter(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equality on every field of the filter; types count ("42" is not 42)."""
    return all(field in metadata and _same(metadata[field], value) for field, value in wanted.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # true is not 1
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):  # 1 is 1.0, as JSON has one number type
        return a == b
    return type(a) is type(b) and a == b


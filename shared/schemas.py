"""Task names, queues and the validation rules for what callers send.

The API validates with these before enqueueing; the worker trusts payloads that passed.
docs/api.md states the same rules in words.
"""

import json
import math
import re
import zlib
from typing import Any

from shared.errors import LookalikeError

# --- Celery task names and queues ------------------------------------------------------------
INDEX_TASK = "lookalike.index_image"
QUERY_TASK = "lookalike.query_image"
CHECK_TASK = "lookalike.check_image"
WEBHOOK_TASK = "lookalike.deliver_webhook"
INDEX_QUEUE = "index"
QUERY_QUEUE = "query"
WEBHOOK_QUEUE = "webhooks"
WHITEN_TASK = "lookalike.whiten"  # learns a collection's whitening; started by workers, not by callers
# The ranking half of a query or check, passed by the worker that computed its vector to the search group
# holding the collection (queue search.<group>).
SEARCH_TASK = "lookalike.search"
SEARCH_QUEUE_PREFIX = "search."
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
TASK_QUEUES = {INDEX_TASK: INDEX_QUEUE, QUERY_TASK: QUERY_QUEUE, CHECK_TASK: QUERY_QUEUE, WEBHOOK_TASK: WEBHOOK_QUEUE,
               WHITEN_TASK: INDEX_QUEUE}
# The tasks callers submit, by the kind their task records show.
TASK_KINDS = {INDEX_TASK: "index", QUERY_TASK: "query", CHECK_TASK: "check"}

# --- Collection settings -------------------------------------------------------------------
COLLECTION_KINDS = ("block", "allow")
# match_threshold: CNN cosine at or above which a match is a near-duplicate;
# pdq_max_distance: PDQ Hamming distance at or below which it is (Meta's suggested 31);
# whitening: search in a PCA-whitened space learned from the collection's own vectors.
# group: the search group holding the collection (LOOKALIKE_SEARCH_GROUPS); None: chosen by a hash of its name.
# A collection's buckets: its images spread by a hash of their id (shared.keys.bucket_of), each bucket's keys in
# a hash slot of its own. Fixed when the collection is first written; 1 (the default) is the unsharded layout.
MAX_BUCKETS = 1024
DEFAULT_COLLECTION_SETTINGS = {"match_threshold": 0.9, "pdq_max_distance": 31, "kind": "block", "whitening": False,
                               "group": None}
PDQ_BITS = 256

# --- Matching signals: the CNN vector, the PDQ hash, or both ---------------------------------
CNN, PDQ = "cnn", "pdq"
SIGNAL_CHOICES = {"cnn": (CNN,), "pdq": (PDQ,), "both": (CNN, PDQ)}
MAX_ALLOW_COLLECTIONS = 10

# --- Task states as the API shows them ------------------------------------------------------
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINISHED_STATES = (SUCCEEDED, FAILED)
# A task's webhook: waiting for the task (pending), between failed attempts (retrying), done.
CALLBACK_PENDING, CALLBACK_RETRYING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "retrying", "delivered", "failed"
# Request fields a task record keeps and its resource shows.
TASK_REQUEST_FIELDS = ("collection", "image_id", "url", "k", "min_score", "filter", "signals", "expand",
                       "allow_collections", "request_id")


def task_resource(record: dict[str, Any], *, with_callback: bool = True) -> dict[str, Any]:
    """A task as GET /v1/tasks/{id} shows it (and a webhook sends it, without its own delivery state)."""
    resource = {
        "task_id": record["task_id"],
        "kind": record["kind"],
        "state": record["state"],
        "result": record.get("result"),
        "error": record.get("error"),
        "submitted_at": record["submitted_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }
    resource.update({name: record[name] for name in TASK_REQUEST_FIELDS if name in record})
    if with_callback and record.get("callback"):
        resource["callback"] = record["callback"]
    return resource

# --- Vectors ---------------------------------------------------------------------------
VECTOR_DIMENSION = 512  # VGG16's last convolutional block has 512 channels

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
        raise LookalikeError("invalid_metadata", f"Metadata is larger than {max_bytes} bytes.", {"max_bytes": max_bytes})
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
        raise LookalikeError("invalid_metadata", f"Metadata is larger than {max_bytes} bytes.", {"max_bytes": max_bytes})
    return value


def parse_aligned_array(raw: str | None, length: int, *, code: str, name: str) -> list[Any] | None:
    """An optional JSON array field with exactly one entry per uploaded file (bulk uploads)."""
    if raw is None or raw == "":
        return None
    value = parse_json(raw, code, name, max_depth=MAX_JSON_DEPTH + 1)  # the array, then each item's own levels
    if not isinstance(value, list) or len(value) != length:
        raise LookalikeError(code, f"'{name}' must be a JSON array with one entry per image ({length}).",
                             {"expected_length": length, "received_length": len(value) if isinstance(value, list) else None})
    return value


def validate_collection_settings(value: Any, groups: tuple[str, ...]) -> dict[str, Any]:
    """A complete settings object: ``match_threshold`` (-1 to 1), ``pdq_max_distance`` (0-256),
    ``kind`` (block or allow), ``whitening`` (true or false) and ``group`` (one of ``groups``, the search
    groups, or null: by a hash of the name); fields left out take their defaults. ``buckets`` (1 to
    MAX_BUCKETS) is kept only when given: left out, the collection keeps the count it has."""
    problem = None
    if not isinstance(value, dict) or set(value) - set(DEFAULT_COLLECTION_SETTINGS) - {"buckets"}:
        problem = f"Send a JSON object with only {sorted([*DEFAULT_COLLECTION_SETTINGS, 'buckets'])}."
    else:
        buckets = value.get("buckets", 1)
        value = DEFAULT_COLLECTION_SETTINGS | value
        threshold, distance = value["match_threshold"], value["pdq_max_distance"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
            problem = "'match_threshold' must be a number from -1 to 1."
        elif isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance <= PDQ_BITS:
            problem = f"'pdq_max_distance' must be a whole number from 0 to {PDQ_BITS}."
        elif value["kind"] not in COLLECTION_KINDS:
            problem = f"'kind' must be one of {list(COLLECTION_KINDS)}."
        elif not isinstance(value["whitening"], bool):
            problem = "'whitening' must be true or false."
        elif value["group"] is not None and value["group"] not in groups:
            problem = f"'group' must be null or one of this service's search groups {list(groups)}."
        elif isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
            problem = f"'buckets' must be a whole number from 1 to {MAX_BUCKETS}."
    if problem:
        raise LookalikeError("invalid_collection_settings", problem)
    settings = {"match_threshold": float(value["match_threshold"]), "pdq_max_distance": value["pdq_max_distance"],
                "kind": value["kind"], "whitening": value["whitening"], "group": value["group"]}
    return settings | ({"buckets": value["buckets"]} if "buckets" in value else {})


def group_of(collection: str, settings: dict[str, Any], groups: tuple[str, ...]) -> str:
    """The search group holding a collection: the one its settings pin, else one chosen by a stable hash of its
    name (CRC-32: the same in every process and Python version)."""
    pinned = settings.get("group")
    if pinned in groups:
        return pinned
    return groups[zlib.crc32(collection.encode()) % len(groups)]


def bucket_groups(collection: str, settings: dict[str, Any], buckets: int, groups: tuple[str, ...],
                  moved: dict[int, str] | None = None) -> dict[str, list[int]]:
    """Which search group holds which of a collection's buckets: all of them in its pinned group, else dealt
    round the groups from the one its name hashes to (so one bucket lands where :func:`group_of` says, and
    eight buckets over four groups are two in each); ``moved``: buckets an admin moved, and where to (a
    group no longer configured is passed over). Groups in the order of ``groups``."""
    pinned = settings.get("group")
    first = zlib.crc32(collection.encode()) % len(groups)
    placement: dict[str, list[int]] = {}
    for bucket in range(buckets):
        group = pinned if pinned in groups else groups[(first + bucket) % len(groups)]
        if moved and moved.get(bucket) in groups:
            group = moved[bucket]
        placement.setdefault(group, []).append(bucket)
    return {group: placement[group] for group in groups if group in placement}


# A write token: which change of each bucket includes a client's writes, "<bucket>:<change>" comma-separated. A
# query passing it sees those writes whatever the staleness allowed (its buckets' replicas catch up first).
WRITE_TOKEN = re.compile(r"\d{1,4}:\d{1,19}(,\d{1,4}:\d{1,19}){0,1023}")


def write_token(written: dict[int, int]) -> str:
    return ",".join(f"{bucket}:{seq}" for bucket, seq in sorted(written.items()))


def parse_write_token(raw: str | None) -> dict[int, int]:
    """The changes a query must see, by bucket (several tokens joined with commas: the latest of each)."""
    if raw is None or raw == "":
        return {}
    if len(raw) > 25_000 or not WRITE_TOKEN.fullmatch(raw):
        raise LookalikeError("invalid_write_token", "'write_token' must be what an index or vectors answer gave: "
                             "<bucket>:<change> pairs, comma-separated.")
    fresh: dict[int, int] = {}
    for pair in raw.split(","):
        bucket, seq = (int(number) for number in pair.split(":"))
        fresh[bucket] = max(fresh.get(bucket, 0), seq)
    return fresh


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


def search_queue(group: str) -> str:
    return f"{SEARCH_QUEUE_PREFIX}{group}"


def parse_signals(raw: str | None, default: str) -> tuple[str, ...]:
    """Which signals decide a match: ``cnn``, ``pdq`` or ``both``."""
    choice = default if raw is None or raw == "" else raw
    if choice not in SIGNAL_CHOICES:
        raise LookalikeError("invalid_signals", f"'signals' must be one of {list(SIGNAL_CHOICES)}.",
                             {"signals": str(raw)[:50]})
    return SIGNAL_CHOICES[choice]


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


def verdict(kind: str, near_duplicate: bool) -> str:
    """What a match means for the caller: a near-duplicate of a block list blocks, of an allow list allows."""
    return kind if near_duplicate else "none"


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

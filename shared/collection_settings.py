"""A collection's settings (PUT /v1/collections/{collection}): their defaults and their validation."""

from typing import Any

from shared.errors import LookalikeError

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


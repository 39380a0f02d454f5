"""A collection's settings (PUT /v1/collections/{collection}): one pydantic model that both checks what a
caller sends and documents it (api/openapi.py uses the same class), and the defaults derived from it."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import LookalikeError

COLLECTION_KINDS = ("block", "allow")
# A collection's buckets: its images spread by a hash of their id (shared.keys.bucket_of), each bucket's keys in
# a hash slot of its own. Fixed when the collection is first written; 1 (the default) is the unsharded layout.
MAX_BUCKETS = 1024
PDQ_BITS = 256


class CollectionSettings(BaseModel):
    """What a match means in the collection, and where it lives. Strict: ``true`` is not a number, ``"8"`` is
    not a count -- a caller's mistake is refused, never coerced into a setting it did not mean."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"match_threshold": 0.9, "pdq_max_distance": 31, "kind": "block", "whitening": False, "group": None}]})
    match_threshold: float = Field(0.9, ge=-1, le=1, description="CNN cosine at or above which a match is a "
                                   "near-duplicate.")
    pdq_max_distance: int = Field(31, ge=0, le=PDQ_BITS, description="PDQ Hamming distance at or below which a "
                                  "match is a near-duplicate (Meta suggests 31).")
    kind: Literal["block", "allow"] = Field("block", description="What a near-duplicate means: the verdict.")
    whitening: bool = Field(False, description="Search in a PCA-whitened space learned from the collection's own "
                            "vectors (once it holds enough; re-learned as it grows). Changes what scores mean: "
                            "calibrate `match_threshold` again.")
    group: str | None = Field(None, description="The search group holding the collection (one of "
                              "`LOOKALIKE_SEARCH_GROUPS`); null: chosen by a stable hash of its name.")
    buckets: int = Field(1, ge=1, le=MAX_BUCKETS, description="How many buckets the collection's images are spread "
                         "over (by a hash of their id), each in a Redis Cluster slot of its own. Fixed when the "
                         "collection is first written: another count is `409 buckets_fixed`. Left out of a PUT: "
                         "the collection keeps its count.")


DEFAULT_COLLECTION_SETTINGS = CollectionSettings().model_dump(exclude={"buckets"})


def validate_collection_settings(value: Any, groups: tuple[str, ...]) -> dict[str, Any]:
    """A complete settings object from what a caller sent (fields left out take their defaults), checked by
    :class:`CollectionSettings` and against this service's search ``groups``; ``buckets`` is kept only when
    given (left out, the collection keeps the count it has). Refused: ``invalid_collection_settings``."""
    if not isinstance(value, dict):
        raise LookalikeError("invalid_collection_settings",
                             f"Send a JSON object with only {sorted(CollectionSettings.model_fields)}.")
    try:
        settings = CollectionSettings.model_validate(value)
    except ValidationError as error:
        raise LookalikeError("invalid_collection_settings", _problem(error)) from None
    if settings.group is not None and settings.group not in groups:
        raise LookalikeError("invalid_collection_settings",
                             f"'group' must be null or one of this service's search groups {list(groups)}.")
    checked = settings.model_dump(exclude={"buckets"}) | {"match_threshold": float(settings.match_threshold)}
    return checked | ({"buckets": settings.buckets} if "buckets" in settings.model_fields_set else {})


def _problem(error: ValidationError) -> str:
    """The first thing wrong, said in the settings' own words."""
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "extra_forbidden" or name not in CollectionSettings.model_fields:
        return f"Send a JSON object with only {sorted(CollectionSettings.model_fields)}."
    field = CollectionSettings.model_fields[name]
    return f"'{name}': {first['msg']} ({field.description})"

"""The error catalogue: every error code the API or a task can report, with its HTTP status.

Errors travel as ``{"error": {"code", "message", "details"}}`` in HTTP answers and as the
``error`` field of a failed task. Codes are stable: callers branch on them.
"""

from typing import Any

# code -> HTTP status. A code used anywhere must be listed here (tests check it).
CATALOGUE: dict[str, int] = {
    # Request shape (400): the request cannot be parsed as the endpoint expects.
    "image_missing": 400,
    "image_empty": 400,
    "invalid_collection_name": 400,
    "invalid_image_id": 400,
    "invalid_metadata": 400,
    "invalid_k": 400,
    "invalid_expand": 400,
    "invalid_wait": 400,
    "invalid_cursor": 400,
    "invalid_limit": 400,
    "invalid_ids": 400,
    "invalid_vector": 400,
    "invalid_hash": 400,
    "invalid_hash_quality": 400,
    "invalid_min_score": 400,
    "invalid_filter": 400,
    "invalid_json": 400,
    "ambiguous_query_input": 400,
    "ambiguous_image_input": 400,
    "invalid_collection_settings": 400,
    "invalid_bucket_move": 400,
    "invalid_write_token": 400,
    "invalid_partial": 400,
    "invalid_workers": 400,
    "duplicate_image_id": 400,
    "invalid_signals": 400,
    "invalid_allow_collections": 400,
    "invalid_url": 400,
    "invalid_callback_url": 400,
    "invalid_idempotency_key": 400,
    "bad_request": 400,
    # Authentication (401) and permission (403).
    "unauthorized": 401,
    "forbidden": 403,
    # Not found (404).
    "not_found": 404,
    "task_not_found": 404,
    "image_not_found": 404,
    "collection_not_found": 404,
    "bucket_not_found": 404,
    "batch_not_found": 404,
    "thumbnail_not_found": 404,
    "method_not_allowed": 405,
    # Conflicts with stored state (409).
    "descriptor_mismatch": 409,
    "buckets_fixed": 409,  # another bucket count for a collection that has one
    "collection_changed": 409,  # a save into buckets of a collection dropped and made again with another count
    "collection_not_sharded": 409,  # a bucket move asked of a collection of one bucket
    "descriptor_unknown": 409,
    "idempotency_key_in_progress": 409,
    # Size limits (413) and media type (415).
    "upload_too_large": 413,
    "batch_too_large": 413,
    "too_many_vectors": 413,
    "too_many_hashes": 413,
    "unsupported_media_type": 415,
    # Well-formed but unacceptable values (422).
    "image_too_many_pixels": 422,
    "image_undecodable": 422,
    "multi_frame_image": 422,
    "upload_expired": 422,
    "no_valid_images": 422,
    "vector_dimension_mismatch": 422,
    "vector_not_finite": 422,
    "zero_vector": 422,
    "signal_unavailable": 422,
    "expand_unavailable": 422,  # a task's: query expansion over buckets held by several search groups
    "idempotency_key_reused": 422,
    "url_not_allowed": 422,
    "callback_not_allowed": 422,
    # Fetching an image by URL (failures of the task, reported on it).
    "fetch_failed": 422,
    "fetch_too_large": 422,
    "fetch_timeout": 422,
    # Too many requests (429, with Retry-After).
    "rate_limited": 429,
    # The service cannot answer now (503).
    "store_unavailable": 503,
    "store_full": 503,
    "not_ready": 503,
    "collection_loading": 503,  # a task's: the worker is loading the collection's replica; submit again shortly
    "search_unavailable": 503,  # a task's: a search group holding some of the collection's buckets did not answer
    # A bug: never expected in normal operation.
    "internal_error": 500,
}


class LookalikeError(Exception):
    """An error with a stable code, raised anywhere and rendered by the API or a task."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        if code not in CATALOGUE:
            raise ValueError(f"unknown error code {code!r}; add it to shared.errors.CATALOGUE")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}

    @property
    def http_status(self) -> int:
        return CATALOGUE[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

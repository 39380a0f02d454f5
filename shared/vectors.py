"""Vectors: the dimension of the workers' own (VGG16's), and those supplied by callers (queries by vector,
precomputed vectors): parsing and validation.

Accepted forms: a JSON array of numbers, or a base64 string of little-endian float32
values. Every accepted vector is L2-normalised, as the worker's own are, so scores stay
cosine similarities.
"""

import base64
import binascii
from typing import Any

import numpy as np

from shared.errors import LookalikeError
from shared.inputs import parse_json
from shared.store import VECTOR_DTYPE

VECTOR_DIMENSION = 512  # VGG16's last convolutional block has 512 channels


def parse_vector(value: Any, dimension: int) -> np.ndarray:
    """A unit float32 vector of ``dimension`` from a JSON array or a base64 string."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise LookalikeError("invalid_vector",
                                 "A vector string must be base64 of little-endian float32 values.") from None
        if len(raw) % VECTOR_DTYPE.itemsize:
            raise LookalikeError("invalid_vector", "The base64 vector is not a whole number of float32 values.")
        vector = np.frombuffer(raw, dtype=VECTOR_DTYPE).astype(np.float32)
    elif isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        vector = np.asarray(value, dtype=np.float64)  # float64 first: huge values fail the finite check, not overflow
    else:
        raise LookalikeError("invalid_vector",
                             "A vector must be a JSON array of numbers or a base64 string of float32.")
    if vector.shape != (dimension,):
        raise LookalikeError("vector_dimension_mismatch", f"Vectors here have {dimension} dimensions.",
                             {"expected": dimension, "received": int(vector.shape[0])})
    if not np.isfinite(vector.astype(np.float32)).all():  # beyond float32's range becomes infinite
        raise LookalikeError("vector_not_finite", "The vector contains NaN, infinite or out-of-float32-range values.")
    vector = vector.astype(np.float64)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise LookalikeError("zero_vector", "A zero vector has no direction to compare.")
    return (vector / norm).astype(np.float32)


def parse_vector_field(raw: str, dimension: int) -> np.ndarray:
    """The ``vector`` form field of a query: a JSON array, or base64 as it is."""
    stripped = raw.strip()
    if stripped.startswith("["):
        # NaN may pass the parser: a vector's values are checked (vector_not_finite) as a vector.
        value = parse_json(stripped, "invalid_vector", "vector", max_depth=1, allow_non_finite=True)
    else:
        value = stripped
    return parse_vector(value, dimension)

"""PDQ perceptual hashes (Meta's, through the ``pdqhash`` package) beside the CNN vectors.

A PDQ hash is 256 bits; two images are near-duplicates when few bits differ (Hamming
distance; Meta suggests <= 31). It is exact about re-encodes and resizes and blind to
crops, where the CNN does better: the two signals complement each other. Each hash comes
with a quality (0-100); flat or featureless images give low quality and unreliable hashes,
so hashes below the configured quality are kept in Redis but never matched.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import pdqhash

from worker.search import RowsById

HASH_BYTES = 32
# PDQ reduces every image to 64x64 internally; hashing a copy of at most this side gives
# the same bits within a few and keeps a 12-megapixel photo from costing ~1 s.
HASH_INPUT_MAX_SIDE = 512


@dataclass(frozen=True)
class PdqHash:
    bits: bytes  # 32 bytes, the 256 bits in pdqhash's order
    quality: int

    def encode(self) -> bytes:
        """Stored form: the 32 hash bytes, then one byte of quality."""
        return self.bits + bytes([self.quality])

    @classmethod
    def decode(cls, stored: bytes) -> "PdqHash":
        return cls(stored[:HASH_BYTES], stored[HASH_BYTES])

    @property
    def hex(self) -> str:
        return self.bits.hex()


def compute_pdq(pixels_bgr: np.ndarray) -> PdqHash:
    """The PDQ hash and quality of a decoded BGR image."""
    height, width = pixels_bgr.shape[:2]
    scale = HASH_INPUT_MAX_SIDE / max(height, width)
    if scale < 1:
        pixels_bgr = cv2.resize(pixels_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                                interpolation=cv2.INTER_AREA)
    bits, quality = pdqhash.compute(cv2.cvtColor(pixels_bgr, cv2.COLOR_BGR2RGB))
    return PdqHash(np.packbits(bits.astype(np.uint8)).tobytes(), int(quality))


class HashIndex:
    """A collection's usable PDQ hashes as one (n, 4) uint64 matrix; exhaustive Hamming search.

    32 bytes per image; a full scan of a million hashes takes about 30 ms on one core,
    so no index structure is needed at the sizes the CNN replica holds.
    """

    def __init__(self, min_quality: int):
        self.min_quality = min_quality
        self._rows = RowsById(HASH_BYTES // 8, np.uint64)

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, image_id: str, stored: PdqHash | None) -> None:
        """Set an image's hash; None (no hash) or one below the minimum quality removes it."""
        if stored is None or stored.quality < self.min_quality:
            self._rows.delete(image_id)
        else:
            self._rows.put(image_id, np.frombuffer(stored.bits, dtype=np.uint64))

    def delete(self, image_id: str) -> None:
        self._rows.delete(image_id)

    def within(self, query: bytes, max_distance: int) -> list[tuple[str, int]]:
        """Every image whose hash is within ``max_distance`` bits of ``query``, nearest first."""
        distances = _popcount_rows(self._rows.matrix ^ np.frombuffer(query, dtype=np.uint64))
        rows = np.flatnonzero(distances <= max_distance)
        rows = rows[np.argsort(distances[rows], kind="stable")]
        return [(self._rows.ids[row], int(distances[row])) for row in rows]

    def distance_to(self, image_id: str, query: bytes) -> int | None:
        """Hamming distance to one image's hash (None: it has no usable hash)."""
        words = self._rows.row_of(image_id)
        return None if words is None else int(np.bitwise_count(words ^ np.frombuffer(query, dtype=np.uint64)).sum())


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words).sum(axis=1, dtype=np.int32)

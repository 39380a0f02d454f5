"""PDQ hashes as Lookalike stores them and as callers write them (64 hex digits), without the hashing library:
the API reads hashes that moderation teams share; the worker computes them (worker/pdq.py).

The hex form is Meta's (ThreatExchange's): the 256 bits as sixteen 16-bit words, the last word first, each as
four hex digits -- what ``pdqhash``'s bit vector packed big-endian gives (worker/pdq.py), so a hash from
Meta's tools, from ThreatExchange or from ``GET …/images/{id}`` reads the same here.
"""

import re
from dataclasses import dataclass

from shared.errors import LookalikeError

HASH_BYTES = 32
HEX_DIGITS = 2 * HASH_BYTES
HEX = re.compile(r"[0-9a-fA-F]{64}")
# A shared hash without its quality is taken as a good one (hash lists often carry none).
DEFAULT_QUALITY = 100


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


def parse_pdq_hash(raw, quality=None, *, name: str = "hash") -> PdqHash:
    """A caller's hash: 64 hex digits (either case) and a quality 0-100 (default 100). Refused with
    ``invalid_hash`` / ``invalid_hash_quality``."""
    return PdqHash(parse_hash_bits(raw, name=name), parse_hash_quality(quality))


def parse_hash_bits(raw, *, name: str = "hash") -> bytes:
    """The 32 bytes of a hash written as 64 hex digits (either case); ``invalid_hash`` otherwise."""
    if not isinstance(raw, str) or not HEX.fullmatch(raw):
        raise LookalikeError("invalid_hash", f"'{name}' must be a PDQ hash: {HEX_DIGITS} hex digits.")
    return bytes.fromhex(raw)


def parse_hash_quality(quality) -> int:
    """A hash's quality: a whole number 0-100, as a JSON number or form text; left out (None): 100."""
    if quality is None:
        return DEFAULT_QUALITY
    if isinstance(quality, str) and quality.isdigit() and len(quality) <= 3:
        quality = int(quality)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise LookalikeError("invalid_hash_quality", "A hash's 'quality' must be a whole number from 0 to 100.")
    return quality

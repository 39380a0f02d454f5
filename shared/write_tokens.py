"""Write tokens: which changes of a collection's buckets hold a caller's writes. Index, vectors, hashes and
delete answers give one; a query or check passing it back sees those writes."""

import re

from shared.errors import LookalikeError

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


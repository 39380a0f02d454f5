"""Search groups (``LOOKALIKE_SEARCH_GROUPS``): their names, and which group holds which bucket of a collection.

The queue of each group is shared/queue.py's ``search_queue``; worker/placement.py moves buckets between
groups.
"""

import re
import zlib
from typing import Any

GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def bucket_groups(collection: str, settings: dict[str, Any], buckets: int, groups: tuple[str, ...],
                  moved: dict[int, str] | None = None) -> dict[str, list[int]]:
    """Which search group holds which of a collection's buckets: all of them in its pinned group, else dealt
    round the groups from the one its name hashes to (CRC-32: the same in every process and Python version;
    a collection of one bucket is in that group, and eight buckets over four groups are two in each);
    ``moved``: buckets an admin moved, and where to (a group no longer configured is passed over). Groups in
    the order of ``groups``."""
    pinned = settings.get("group")
    first = zlib.crc32(collection.encode()) % len(groups)
    placement: dict[str, list[int]] = {}
    for bucket in range(buckets):
        group = pinned if pinned in groups else groups[(first + bucket) % len(groups)]
        if moved and moved.get(bucket) in groups:
            group = moved[bucket]
        placement.setdefault(group, []).append(bucket)
    return {group: placement[group] for group in groups if group in placement}


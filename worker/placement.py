"""Search processes keep to their share of sharded collections' buckets as buckets move between groups.

A move (``PUT /v1/collections/{c}/buckets/{b}``) is recorded as *moving*; queries still go to the
bucket's old group. Each heartbeat, every process of the target group loads the moving bucket in
the background and, once it holds it, says so; the process that finds every live process of its
group ready commits the move, and queries go to the new group from then on. The old group's
processes let go of the bucket a grace period (``LOOKALIKE_GATHER_TIMEOUT_SECONDS``) after they
see it is no longer theirs, so that searches sent before the commit still find it. No query is
answered from fewer buckets than it asked, or waits for a load. Replicas of what is no longer a
group's by any other way -- a collection dropped, made again with another bucket count, or pinned
to another group -- are let go the same way.
"""

import logging
import time

from shared import keys
from shared.search_groups import bucket_groups
from shared.store import Store
from worker.replica import Replicas

log = logging.getLogger(__name__)


class PlacementKeeper:
    """One search process's share of the buckets: loads the buckets moving to its groups, commits moves its
    group is ready for, lets go of buckets no longer its own."""

    def __init__(self, store: Store, replicas: Replicas, name: str, groups: tuple[str, ...],
                 all_groups: tuple[str, ...], grace_seconds: float):
        self.store, self.replicas, self.name = store, replicas, name
        self.groups, self.all_groups, self.grace_seconds = groups, all_groups, grace_seconds
        self._not_ours_since: dict[str, float] = {}  # (monotonic) since when a part held here is no longer ours

    def tend(self, liveness_seconds: float) -> None:
        self._take_moving_buckets(liveness_seconds)
        self._let_go_of_others()

    def _take_moving_buckets(self, liveness_seconds: float) -> None:
        for collection in self.store.collections_moving():
            buckets = self.store.buckets(collection)
            for bucket, group in self.store.moves(collection).items():
                if group not in self.groups or bucket >= buckets:
                    continue
                if not self.replicas.prefetch(keys.part(collection, bucket, buckets)):
                    continue  # still loading: ready at a later heartbeat
                ready = self.store.mark_ready(collection, bucket, self.name)
                if self.store.live_processes_of(group, liveness_seconds) <= ready \
                        and self.store.commit_move(collection, bucket, group):
                    log.info("bucket %d of %s moved to search group %s (%d processes hold it)", bucket, collection,
                             group, len(ready))

    def _let_go_of_others(self) -> None:
        placements: dict[str, tuple[dict[str, list[int]], dict[int, str]] | None] = {}
        now = time.monotonic()
        for part in self.replicas.held_parts():
            collection = keys.collection_of(part)
            if collection not in placements:
                info = self.store.collection_info(collection, count_images=False)
                buckets = None if info is None else info["settings"]["buckets"]
                placements[collection] = None if info is None else (
                    buckets,
                    bucket_groups(collection, info["settings"], buckets, self.all_groups,
                                  self.store.placement_overrides(collection) if buckets > 1 else None),
                    self.store.moves(collection) if buckets > 1 else {})
            known = placements[collection]
            bucket = 0 if part == collection else int(part.rsplit("/", 1)[1])
            # (a part of another layout -- the collection made again with another bucket count -- is no one's)
            ours = (known is not None and (part == collection) == (known[0] == 1)
                    and (any(bucket in known[1].get(group, ()) for group in self.groups)
                         or known[2].get(bucket) in self.groups))
            if ours:
                self._not_ours_since.pop(part, None)
            elif now - self._not_ours_since.setdefault(part, now) >= self.grace_seconds:
                self._not_ours_since.pop(part, None)
                self.replicas.forget_part(part)

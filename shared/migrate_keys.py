"""Move a store written by the layout before hash tags to today's key names (shared/keys.py).

    python -m shared.migrate_keys [--dry-run]

Run it once, with the API and every worker stopped, against the single Redis (or Sentinel master) that
``LOOKALIKE_REDIS_URL`` names, before starting this version. It renames

- each collection's keys, ``lookalike:col:<c>:<part>`` -> ``lookalike:col:{<c>}:<part>`` (all of one
  collection in one script: a collection moves whole),
- each task's record, lease and upload, ``lookalike:task:<id>[:lease]`` and ``lookalike:upload:<id>`` ->
  ``lookalike:task:{<id>}``, ``...:lease``, ``...:upload`` (one script per task), keeping their TTLs,

and drops the worker heartbeats, consumers and held-message sets under their old names (every live
worker writes them anew each beat). The collections registry, batches, idempotency records, API keys and
the reaper claim keep their names. A key whose new name is taken already is left where it is, with the
rest of its collection or task, and named in the report (exit status 1): look at both, delete the one to
lose, and run it again. Running it again is harmless: what has moved is not found under an old name.

Moving data into a Redis Cluster: run this on the single node first, then import the renamed keys
(``redis-cli --cluster import``); the cluster refuses the scripts that move several keys at once.
"""

import argparse
import sys
from dataclasses import dataclass, field

from shared import keys
from shared.keys import Legacy
from shared.redis_client import is_cluster, redis_client

# KEYS: old name, new name, old name, new name, ... ARGV[1]: '1' to count only (a dry run).
# Moves every pair whose old key exists, unless any of them finds its new name taken: then none.
MOVE_LUA = """
local taken = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('EXISTS', KEYS[i + 1]) == 1 then
    table.insert(taken, KEYS[i + 1])
  end
end
if #taken > 0 then return {0, taken} end
local moved = 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if ARGV[1] ~= '1' then redis.call('RENAME', KEYS[i], KEYS[i + 1]) end
    moved = moved + 1
  end
end
return {moved, taken}
"""
SCAN_COUNT = 1000


@dataclass
class Report:
    dry_run: bool = False
    collections: set[str] = field(default_factory=set)
    collection_keys: int = 0
    tasks: set[str] = field(default_factory=set)
    task_keys: int = 0
    dropped: int = 0
    conflicts: list[str] = field(default_factory=list)  # new names already taken (their old keys stay)
    unknown: list[str] = field(default_factory=list)  # old-looking keys of no known kind, left alone

    def lines(self) -> list[str]:
        verb = "would move" if self.dry_run else "moved"
        lines = [
            f"collections: {verb} {len(self.collections)} ({self.collection_keys} keys)",
            f"tasks: {verb} {len(self.tasks)} ({self.task_keys} keys: records, leases, uploads)",
            f"heartbeats, consumers and held sets: {'would drop' if self.dry_run else 'dropped'} {self.dropped} keys "
            "(every worker writes them anew each beat)",
        ]
        if not (self.collections or self.tasks or self.dropped):
            lines.append("nothing under an old name: the store already has today's layout")
        if self.unknown:
            lines.append(f"left alone, of no known kind ({len(self.unknown)}): {', '.join(self.unknown[:10])}")
        if self.conflicts:
            lines.append(f"NOT moved, new name already taken ({len(self.conflicts)}; their collection or task stays "
                         f"under its old names): {', '.join(self.conflicts[:20])}")
        return lines


def migrate(client, dry_run: bool = False) -> Report:
    """Rename every key of the old layout in the store ``client`` reaches (one server); see the module."""
    if is_cluster(client):
        raise ValueError("run the migration on the single Redis holding the old layout, not on a cluster")
    move = client.register_script(MOVE_LUA)
    report = Report(dry_run=dry_run)
    seen: set[tuple[str, str]] = set()  # (kind, name) of the collections and tasks already tried

    def moved(pairs: list[tuple[str, str]]) -> int:
        count, taken = move(keys=[name for pair in pairs for name in pair], args=["1" if dry_run else "0"])
        report.conflicts.extend(name.decode() if isinstance(name, bytes) else name for name in taken)
        return int(count)

    for key in _scan(client, Legacy.COLLECTION_KEYS_PATTERN):
        rest = key.removeprefix(f"{keys.PREFIX}:col:")
        if rest.startswith("{"):
            continue  # today's layout
        collection, _, part = rest.partition(":")
        if part not in Legacy.COLLECTION_SUFFIXES:
            report.unknown.append(key)
            continue
        if ("collection", collection) in seen:
            continue
        seen.add(("collection", collection))
        count = moved([(Legacy.collection_key(collection, suffix), new_name(collection))
                       for suffix, new_name in Legacy.COLLECTION_SUFFIXES.items()])
        if count:
            report.collections.add(collection)
            report.collection_keys += count

    def move_task(task_id: str) -> None:
        if ("task", task_id) in seen:
            return
        seen.add(("task", task_id))
        count = moved([(Legacy.task(task_id), keys.task(task_id)),
                       (Legacy.task_lease(task_id), keys.task_lease(task_id)),
                       (Legacy.upload(task_id), keys.upload(task_id))])
        if count:
            report.tasks.add(task_id)
            report.task_keys += count

    for key in _scan(client, Legacy.TASK_KEYS_PATTERN):
        rest = key.removeprefix(f"{keys.PREFIX}:task:")
        if rest.startswith("{"):
            continue
        task_id, _, part = rest.partition(":")
        if part not in ("", "lease"):
            report.unknown.append(key)
            continue
        move_task(task_id)
    for key in _scan(client, Legacy.UPLOAD_KEYS_PATTERN):
        move_task(key.removeprefix(f"{keys.PREFIX}:upload:"))

    announced = [Legacy.WORKERS, Legacy.WORKERS_INFO, Legacy.CONSUMERS, *_scan(client, Legacy.HELD_KEYS_PATTERN)]
    present = [key for key, exists in zip(announced, _exists_each(client, announced)) if exists]
    if present and not dry_run:
        client.unlink(*present)
    report.dropped = len(present)

    if report.collections and not dry_run:  # the registry names every collection holding something
        client.sadd(keys.COLLECTIONS, *report.collections)
    return report


def _scan(client, pattern: str) -> list[str]:
    # Listed first, then moved: a key renamed during a SCAN may be returned again under its new name.
    return [key.decode() if isinstance(key, bytes) else key for key in client.scan_iter(pattern, count=SCAN_COUNT)]


def _exists_each(client, names: list[str]) -> list[bool]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return [bool(found) for found in pipe.execute()]


def main(argv: list[str] | None = None) -> int:
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m shared.migrate_keys",
                                     description="Rename a store's keys from the layout before hash tags to today's.")
    parser.add_argument("--dry-run", action="store_true", help="count what would move; change nothing")
    args = parser.parse_args(argv)
    settings = get_settings()
    if settings.redis_mode == "cluster":
        parser.error("LOOKALIKE_REDIS_MODE=cluster: run this on the single Redis holding the old layout, then move "
                     "the renamed keys into the cluster (redis-cli --cluster import)")
    report = migrate(redis_client(settings), dry_run=args.dry_run)
    print(f"lookalike key migration{' (dry run: nothing changed)' if args.dry_run else ''}")
    for line in report.lines():
        print(f"  {line}")
    return 1 if report.conflicts else 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading and writing Lookalike's records in Redis: images, vectors, uploads, tasks, workers.

Key names come from :mod:`shared.keys`; this module owns how records are (de)serialised.
Vectors are stored as raw little-endian float32 bytes (512 x 4 = 2 KiB per image). A PDQ hash banked
without an image (POST …/hashes) is an entry whose vector is empty (``NO_VECTOR``): the vectors hash stays
the one list of a collection's entries (counted, listed, deleted, dropped as images are), and readers of
vectors pass such entries over.
"""

import contextlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import redis

from shared import keys
from shared.collection_settings import DEFAULT_COLLECTION_SETTINGS
from shared.errors import LookalikeError
from shared.redis_client import is_cluster, redis_client
from shared.task_records import FINISHED_STATES, QUEUED

VECTOR_DTYPE = np.dtype("<f4")
NO_VECTOR = b""  # the stored vector of an entry that is a PDQ hash alone
# Tries of a pipelined batch of scripts: a server may not know a script yet, or (a cluster) a node be gone in a
# failover.
CLUSTER_SCRIPT_ATTEMPTS = 4
# Redis is away for now (restarting, loading its data, failing over): what waiting out an outage catches.
# (BusyLoadingError is a ConnectionError; a replica answers ReadOnlyError until a failover has promoted it; a
# Redis Cluster answers CLUSTERDOWN or TRYAGAIN, or leaves a slot unserved, while it fails over or reshards.)
REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError,
                     redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                     redis.exceptions.SlotNotCoveredError)


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with milliseconds, as the API shows times."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_vector(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def _vector(blob: bytes | None, dimension: int) -> np.ndarray | None:
    return None if blob is None or blob == NO_VECTOR else np.frombuffer(blob, VECTOR_DTYPE).reshape(dimension)


def decode_vectors(blobs: list[bytes], dimension: int) -> np.ndarray:
    """Stack stored vectors into one (n, dimension) float32 matrix."""
    if not blobs:
        return np.empty((0, dimension), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), dimension)


@dataclass(frozen=True)
class Descriptor:
    """What produced a collection's vectors. Vectors of different descriptors never mix."""

    model: str
    dimension: int
    weights: str

    def to_mapping(self) -> dict[str, str]:
        return {"model": self.model, "dimension": str(self.dimension), "weights": self.weights}


@dataclass(frozen=True)
class Change:
    stream_id: str
    seq: int
    op: str  # "put" | "del" | "drop" (the whole collection) | "whiten" (its whitening changed)
    image_id: str

    @property
    def written_at(self) -> float:
        """Unix time the change was written: a stream id starts with Redis' milliseconds."""
        return int(self.stream_id.split("-")[0]) / 1000


# Run atomically inside Redis: an image's records, the change counter and the change event
# are written together or not at all. KEYS: vectors, images, seq, changes, pdq, thumbs -- all of one part of
# a collection, so of one hash slot (nothing global: the collections registry is written after, by Store) --
# and the descriptor when the part is the whole collection (one bucket: the same slot); a collection of
# several buckets has its descriptor checked apart, first (CLAIM_COLLECTION_LUA).
# Events carry only the id: a replica reads the current vector, so events stay small.
# ARGV: id, vector, record (first write), stream length, model, dimension, weights, pdq, thumbnail, task,
# record (replacement). ARGV[10] names the index task writing (empty: none). A task run again after a crash
# that came after its write (its message redelivered) finds its own record and changes nothing: each task's
# effect once. Returns {'ok', replaced, the change number that includes the write} (a write token's part).
# ARGV[12] '1': the caller takes the collection for one of one bucket, and the script claims it as
# CLAIM_COLLECTION_LUA would (one round trip, not two): KEYS[7] is then its descriptor (checked or set unless
# model is '', hashes banked alone) and KEYS[8] its bucket count, fixed at 1 if unset; another count returns
# {'buckets', count} with nothing written (the caller claims and writes by buckets then).
SAVE_IMAGE_LUA = """
if ARGV[12] == '1' then
  local buckets = redis.call('GET', KEYS[8])
  if buckets and buckets ~= '1' then return {'buckets', buckets} end
  if not buckets then redis.call('SET', KEYS[8], '1') end
end
if ARGV[10] ~= '' then
  local previous = redis.call('HGET', KEYS[2], ARGV[1])
  if previous then
    local readable, record = pcall(cjson.decode, previous)
    if readable and record['task'] == ARGV[10] then
      return {'ok', record['replaced'] and 1 or 0, tonumber(redis.call('GET', KEYS[3]) or '0')}
    end
  end
end
if KEYS[7] and ARGV[5] ~= '' then
  local stored = redis.call('HMGET', KEYS[7], 'model', 'dimension', 'weights')
  if stored[1] then
    if stored[1] ~= ARGV[5] or stored[2] ~= ARGV[6] or stored[3] ~= ARGV[7] then
      return {'mismatch', stored[1], stored[2], stored[3]}
    end
  else
    redis.call('HSET', KEYS[7], 'model', ARGV[5], 'dimension', ARGV[6], 'weights', ARGV[7])
  end
end
local replaced = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], replaced == 1 and ARGV[11] or ARGV[3])
if ARGV[8] == '' then redis.call('HDEL', KEYS[5], ARGV[1]) else redis.call('HSET', KEYS[5], ARGV[1], ARGV[8]) end
if ARGV[9] == '' then redis.call('HDEL', KEYS[6], ARGV[1]) else redis.call('HSET', KEYS[6], ARGV[1], ARGV[9]) end
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'op', 'put', 'id', ARGV[1])
return {'ok', replaced, seq}
"""
# KEYS: the collection's descriptor and bucket count. ARGV: model, dimension, weights (model '': hashes alone,
# no vectors: the descriptor is neither set nor checked), the bucket count the caller wrote with ('' before
# writing). Before a save: the descriptor is set (first write) or must match, and the
# bucket count is fixed (1 unless settings chose another). After a save into several buckets, again with their
# count: a drop since has it set back (so the images written stay counted), another count since is a conflict.
# Returns {'ok', buckets}, {'mismatch', model, dimension, weights} or {'conflict', buckets}.
CLAIM_COLLECTION_LUA = """
local buckets = redis.call('GET', KEYS[2])
if buckets and ARGV[4] ~= '' and buckets ~= ARGV[4] then return {'conflict', buckets} end
if not buckets then
  buckets = ARGV[4] ~= '' and ARGV[4] or '1'
  redis.call('SET', KEYS[2], buckets)
end
if ARGV[1] == '' then return {'ok', buckets} end
local stored = redis.call('HMGET', KEYS[1], 'model', 'dimension', 'weights')
if stored[1] then
  if stored[1] ~= ARGV[1] or stored[2] ~= ARGV[2] or stored[3] ~= ARGV[3] then
    return {'mismatch', stored[1], stored[2], stored[3]}
  end
else
  redis.call('HSET', KEYS[1], 'model', ARGV[1], 'dimension', ARGV[2], 'weights', ARGV[3])
end
return {'ok', buckets}
"""
# KEYS: vectors, images, seq, changes, pdq, thumbs (of one part). Returns the change number of the delete, or 0
# when there was no such image.
DELETE_IMAGE_LUA = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'op', 'del', 'id', ARGV[1])
return seq
"""


# KEYS: vectors, images, seq, changes, pdq, thumbs of one part, then (one bucket: the same slot) the collection's
# descriptor, settings, whitening and bucket count. ARGV: stream length. The change counter and stream survive,
# with a "drop" event: replicas see it and start again from empty. UNLINK: the memory of a large collection is
# freed in the background, not inside the script.
DROP_COLLECTION_LUA = """
local images = redis.call('HLEN', KEYS[1])
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[5], KEYS[6], unpack(KEYS, 7))
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'op', 'drop', 'id', '')
return images
"""

# KEYS: whitening, descriptor, settings, then (one bucket: the same slot) the collection's seq and changes.
# Writes a learned whitening (ARGV[3:]: field, value pairs), with a "whiten" event where its stream was given
# (a collection of several buckets gets one in each bucket's stream after, APPEND_EVENT_LUA), unless the
# collection's descriptor is no longer the one it was learned from (ARGV[2]) or whitening was turned off
# meanwhile: then nothing (returns 0).
SAVE_WHITENING_LUA = """
if redis.call('HGET', KEYS[2], 'model') ~= ARGV[2] then return 0 end
local settings = redis.call('GET', KEYS[3])
if not settings or not cjson.decode(settings)['whitening'] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if KEYS[5] then
  local seq = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'op', 'whiten', 'id', '')
end
return 1
"""
# KEYS: seq, changes of one part. ARGV: stream length, op. A change event of the whole collection ("whiten")
# in one bucket's stream.
APPEND_EVENT_LUA = """
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'seq', seq, 'op', ARGV[2], 'id', '')
return 1
"""
# KEYS: settings, whitening, bucket count, vectors of the collection as one bucket, then (one bucket: the same
# slot) its seq and changes. ARGV: settings (JSON), whitening wanted ('0'/'1'), stream length, buckets wanted
# ('': as they are). New settings; a bucket count other than the one fixed (by an earlier write, or by images
# already stored in one bucket) changes nothing and returns {'fixed', buckets}. Turning whitening off forgets
# the learned one, with a "whiten" event where the stream was given: returns {'ok', 1} then.
PUT_SETTINGS_LUA = """
if ARGV[4] ~= '' then
  local buckets = redis.call('GET', KEYS[3])
  if not buckets and redis.call('HLEN', KEYS[4]) > 0 then buckets = '1' end
  if buckets and buckets ~= ARGV[4] then return {'fixed', buckets} end
  redis.call('SET', KEYS[3], ARGV[4])
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == '0' and redis.call('DEL', KEYS[2]) == 1 then
  if KEYS[6] then
    local seq = redis.call('INCR', KEYS[5])
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'op', 'whiten', 'id', '')
  end
  return {'ok', 1}
end
return {'ok', 0}
"""


# KEYS: task record, its upload. ARGV: record TTL, upload TTL, '1' with an upload ('0' without), the upload,
# then the record's field/value pairs. One task's record and upload, written together (each task on its own:
# a submission of many tasks spans many hash slots, so it is no one transaction on a cluster).
SUBMIT_TASK_LUA = """
if ARGV[3] == '1' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS: task record, its lease[, its upload]. ARGV: execution token, lease ms, started_at, worker (both JSON),
# record TTL. Lets one execution at a time run a task: "finished" (nothing to do), "busy" (another live execution
# holds the lease), "missing" (no record), or "claimed" (state running, attempts counted) -- given the upload's
# key, {"claimed", upload} ({"claimed"} when it has expired): the bytes only to the execution that will use them.
CLAIM_TASK_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == '"succeeded"' or state == '"failed"' then return 'finished' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'busy' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'state', '"running"', 'started_at', ARGV[3], 'worker', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
if not KEYS[3] then return 'claimed' end
local upload = redis.call('GET', KEYS[3])
if upload then return {'claimed', upload} end
return {'claimed'}
"""
# KEYS: task record, its upload, its lease. ARGV: execution token ('' for none), state (JSON), the done channel,
# record TTL, then field/value pairs. An execution that lost its lease -- another holds it, or it lapsed and
# another execution finished the task -- records nothing; otherwise the outcome, upload and lease go together.
FINISH_TASK_LUA = """
if ARGV[1] == '-' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state == '"succeeded"' or state == '"failed"' or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
elseif ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[1] then return 0 end
  local state = redis.call('HGET', KEYS[1], 'state')
  if not holder and (state == '"succeeded"' or state == '"failed"') then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"""
# KEYS: task record, its answers. ARGV: search group, its answer (JSON), groups expected, record TTL. Records one
# group's answer to a scattered search (again: the same answer, overwritten). With every group's answer in, all
# of them come back to merge: {'all', group, answer, ...} (to each arrival that finds them complete: normally
# the last; a redelivered one too, which then finds the task finished or waits on its lease). {'waiting'}:
# others are still out; {'finished'}: the task ended (given up on) meanwhile.
GATHER_ANSWER_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == '"succeeded"' or state == '"failed"' then return {'finished'} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if redis.call('HLEN', KEYS[2]) < tonumber(ARGV[3]) then return {'waiting'} end
local reply = {'all'}
for _, value in ipairs(redis.call('HGETALL', KEYS[2])) do reply[#reply + 1] = value end
return reply
"""
# KEYS: task record, its answers. ARGV: groups expected, the record's fields for a failure (field, value pairs).
# Gives up on a scattered search still missing answers: fails the task (as FINISH_TASK_LUA would, with no
# execution) and returns the groups that answered; false when it ended, or has every answer (whoever
# completed the set finishes it).
GIVE_UP_GATHER_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == '"succeeded"' or state == '"failed"' then return false end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[1]) then return false end
local answered = redis.call('HKEYS', KEYS[2])
table.insert(answered, 1, 'given-up')
return answered
"""
# KEYS: the collection's placement, its moves, the moving bucket's ready set. ARGV: bucket, group. Completes a
# bucket's move to the group it is moving to (no longer moving there, or another move since: nothing, 0).
COMMIT_MOVE_LUA = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""
# KEYS: a lease. ARGV: execution token. Deletes the lease only if that execution holds it.
RELEASE_LEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: a lease. ARGV: execution token, lease ms. Extends the lease only if that execution still holds it.
RENEW_LEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class StoredWhitening:
    """A collection's learned whitening as stored: the maths (worker.descriptors.Whitening) and its record."""

    mean: np.ndarray
    projection: np.ndarray
    learned_from: int  # vectors in the sample it was learned from
    collection_size: int  # images the collection held then (re-learned as it grows past a multiple)
    learned_at: str

    def summary(self) -> dict[str, Any]:
        return whitening_summary(self.learned_from, self.collection_size, self.learned_at, self.projection.shape[1])


def whitening_summary(learned_from, collection_size, learned_at, dimensions) -> dict[str, Any]:
    """A whitening as the API shows it (collections, results), from its stored fields."""
    if isinstance(learned_at, bytes):  # as Redis returns it
        learned_at = learned_at.decode()
    return {"learned_from": int(learned_from), "collection_size": int(collection_size),
            "learned_at": learned_at, "dimensions": int(dimensions)}


class Store:
    def __init__(self, client: redis.Redis, task_ttl_seconds: int, upload_ttl_seconds: int,
                 change_stream_length: int = 100_000):
        """``client``: a ``redis.Redis`` (one server, or a Sentinel's master) or a ``redis.cluster.RedisCluster``."""
        self.redis = client
        self.cluster = is_cluster(client)
        self.task_ttl = task_ttl_seconds
        self.upload_ttl = upload_ttl_seconds
        self.change_stream_length = change_stream_length
        self._save_script = client.register_script(SAVE_IMAGE_LUA)
        self._claim_collection_script = client.register_script(CLAIM_COLLECTION_LUA)
        self._append_event_script = client.register_script(APPEND_EVENT_LUA)
        self._delete_script = client.register_script(DELETE_IMAGE_LUA)
        self._drop_script = client.register_script(DROP_COLLECTION_LUA)
        self._save_whitening_script = client.register_script(SAVE_WHITENING_LUA)
        self._put_settings_script = client.register_script(PUT_SETTINGS_LUA)
        self._claim_task_script = client.register_script(CLAIM_TASK_LUA)
        self._renew_lease_script = client.register_script(RENEW_LEASE_LUA)
        self._release_lease_script = client.register_script(RELEASE_LEASE_LUA)
        self._finish_task_script = client.register_script(FINISH_TASK_LUA)
        self._submit_task_script = client.register_script(SUBMIT_TASK_LUA)
        self._gather_answer_script = client.register_script(GATHER_ANSWER_LUA)
        self._commit_move_script = client.register_script(COMMIT_MOVE_LUA)
        self._give_up_gather_script = client.register_script(GIVE_UP_GATHER_LUA)
        self._several_buckets: set[str] = set()  # (save_images)

    @classmethod
    def from_settings(cls, settings) -> "Store":
        client = redis_client(settings, decode_responses=False, health_check_interval=30)
        return cls(client, settings.task_ttl_seconds, settings.upload_ttl_seconds, settings.change_stream_length)

    def _run_scripts(self, calls: list[tuple[Any, list[str], list]]) -> list:
        """Run many ``(script, keys, args)`` in one round trip (one per node on a cluster), each atomic on its own;
        their results in order, or the first error raised once all have run."""
        return self._send_scripts(calls)[0]

    def _send_scripts(self, calls: list[tuple[Any, list[str], list]], then=None,
                      then_same_slot: bool = False) -> tuple[list, list]:
        """:meth:`_run_scripts`, and ``then(pipe)``'s commands run after every call (their replies second).

        The calls go as plain EVALSHA commands, never through redis-py's Script objects in a pipeline: those
        ask SCRIPT EXISTS first, a round trip more on every pipeline (and a cluster pipeline refuses them). A
        server that does not know a script yet answers NOSCRIPT without running it, and gets the script and the
        call again. ``then``'s commands share the calls' round trip on one server, or on a cluster when
        ``then_same_slot`` (they and every call are of one hash slot, so one node runs them in order) -- sent
        with every round of calls sent again too, the last round's replies kept; otherwise they go once every
        call has run, in a round trip of their own. Either way they come after every call has run.
        """
        if not calls and then is None:
            return [], []
        results: list = [None] * len(calls)
        pending = list(range(len(calls)))
        inline = then is not None and (not self.cluster or then_same_slot)
        after: list = []
        for attempt in range(1, CLUSTER_SCRIPT_ATTEMPTS + 1):
            pipe = self.redis.pipeline(transaction=False)
            for position in pending:
                script, script_keys, args = calls[position]
                pipe.execute_command("EVALSHA", script.sha, len(script_keys), *script_keys, *args)
            if inline:
                then(pipe)
            replies = pipe.execute(raise_on_error=False)
            if inline:
                replies, after = replies[:len(pending)], replies[len(pending):]
            unknown, unreached = [], []
            for position, outcome in zip(pending, replies):
                results[position] = outcome
                if isinstance(outcome, redis.exceptions.NoScriptError):
                    unknown.append(position)
                elif self.cluster and isinstance(outcome, REDIS_UNAVAILABLE):
                    unreached.append(position)
            if not (unknown or unreached) or attempt == CLUSTER_SCRIPT_ATTEMPTS:
                break
            if unreached:
                # A node gone (a failover): ask the cluster where the slots are now, and send those calls again
                # (every script here may run twice: writing the same state again changes nothing).
                time.sleep(0.2 * attempt)
                self.redis.nodes_manager.initialize()
            for script in {id(calls[position][0]): calls[position][0] for position in unknown}.values():
                self.redis.script_load(script.script)  # on every primary of a cluster
            pending = unknown + unreached
        if then is not None and not inline:  # (inline, the last round's pipeline ran them after every call)
            pipe = self.redis.pipeline(transaction=False)
            then(pipe)
            after = pipe.execute(raise_on_error=False)
        error = next((outcome for outcome in [*results, *after] if isinstance(outcome, Exception)), None)
        if error is not None:
            raise error
        return results, after

    # --- Capacity -------------------------------------------------------------------------------

    def check_room_for_images(self, full_ratio: float, collection: str | None = None,
                              lease: tuple[str, str] | None = None) -> bool:
        """Refuse new images (``store_full``) once Redis is ``full_ratio`` of its maxmemory.

        The headroom left keeps queries, task records and deletes working when the store is
        full of images: with noeviction, Redis refuses every write at maxmemory itself. On a cluster,
        the node that takes ``collection``'s images is asked; without one, every primary (any full refuses).

        With ``lease`` (task id, execution): whether that execution still holds the task's lease, as
        :meth:`holds_lease` says -- read in the same round trip on one server (an index task checks both right
        before it writes); True without one.
        """
        held = True
        if lease is not None and not self.cluster:
            pipe = self.redis.pipeline(transaction=False)
            pipe.info("memory")
            pipe.get(keys.task_lease(lease[0]))
            memory, holder = pipe.execute()
            infos, held = [memory], holder is not None and holder.decode() == lease[1]
        else:
            infos = self._memory_info(collection)
        for memory in infos:
            limit = memory.get("maxmemory", 0)
            if limit and memory["used_memory"] >= full_ratio * limit:
                raise LookalikeError("store_full", "The store has no room for more images; delete some or add memory.",
                                     {"used_memory": memory["used_memory"], "maxmemory": limit})
        if lease is not None and self.cluster:  # (the lease's node is not the collection's)
            held = self.holds_lease(*lease)
        return held

    def _memory_info(self, collection: str | None) -> list[dict]:
        """INFO memory of the server that takes the collection's images: on a cluster, the primary serving its
        slot, or every primary when no collection is named (refusing when any is full)."""
        if not self.cluster:
            return [self.redis.info("memory")]
        if collection is not None and self.buckets(collection) == 1:  # (several buckets: on many nodes)
            node = self.redis.get_node_from_key(keys.collection_vectors(collection))
            return [self.redis.info("memory", target_nodes=node)]
        return list(self.redis.info("memory", target_nodes=self.redis.PRIMARIES).values())

    # --- Tasks and uploads ---------------------------------------------------------------------

    def submit(self, submissions: list[tuple[str, str, dict[str, Any], bytes]]) -> None:
        """Store uploads and their queued task records in one round trip, each task's upload and record
        together (one script per task: a task's keys share a hash slot, several tasks' do not). Should any
        fail, every one is removed again before the error is raised, as far as the store lets.

        Each submission is ``(task_id, kind, record fields, upload bytes)``; None: nothing
        uploaded (the worker fetches the image by URL).
        """
        submitted_at = utc_now()
        calls = []
        for task_id, kind, fields, upload in submissions:
            record = {"task_id": task_id, "kind": kind, "state": QUEUED, "submitted_at": submitted_at, **fields}
            calls.append((self._submit_task_script, [keys.task(task_id), keys.upload(task_id)],
                          [self.task_ttl, self.upload_ttl, "0" if upload is None else "1", upload or b"",
                           *[part for pair in _encode_fields(record).items() for part in pair]]))
        try:
            self._run_scripts(calls)
        except Exception:
            try:
                self.discard_submissions([task_id for task_id, *_ in submissions])
            except redis.exceptions.RedisError:
                pass  # unreachable: the records left expire with their TTLs, and no message names them
            raise

    def discard_submissions(self, task_ids: list[str]) -> None:
        """Undo :meth:`submit` for tasks that could not be enqueued."""
        if task_ids:
            self.redis.delete(*(key for task_id in task_ids for key in (keys.upload(task_id), keys.task(task_id))))

    def save_batch(self, batch_id: str, record: dict[str, Any]) -> None:
        self.redis.set(keys.batch(batch_id), json.dumps(record), ex=self.task_ttl)

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.batch(batch_id))
        return None if raw is None else json.loads(raw)

    def task_outcomes(self, task_ids: list[str]) -> list[tuple[str | None, dict | None]]:
        """``(state, error)`` of each task, in order; ``(None, None)`` for an expired record."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(keys.task(task_id), ["state", "error"])
        return [
            (None, None) if state is None else (json.loads(state), json.loads(error) if error else None)
            for state, error in pipe.execute()
        ]

    def get_upload(self, task_id: str) -> bytes | None:
        return self.redis.get(keys.upload(task_id))

    def claim_task(self, task_id: str, execution: str, worker: str, lease_seconds: float) -> str:
        """Let ``execution`` run the task: "claimed", "busy" (another live execution runs it), "finished"
        or "missing" (no record). A claim marks the task running and counts the attempt; the lease
        lapses ``lease_seconds`` after its last renewal (:meth:`renew_leases`), so a dead worker's
        task can be claimed again. (Workers claim with :meth:`claim_task_and_read`.)"""
        return self.claim_task_and_read(task_id, execution, worker, lease_seconds, upload=False)[0]

    def claim_task_and_read(self, task_id: str, execution: str, worker: str, lease_seconds: float,
                            upload: bool = True) -> tuple[str, dict[str, Any] | None, bytes | None]:
        """:meth:`claim_task`, and the task's record as it is right after the claim and (with ``upload``) its
        upload: ``(outcome, record, upload)``, in one round trip (the task's keys share one hash slot, so one
        node runs both in order on a cluster too). The record is None when there is none; the upload is read
        by the claim itself, only when it claims (else None: no bytes for a task another execution runs)."""
        claim_keys = [keys.task(task_id), keys.task_lease(task_id), *([keys.upload(task_id)] if upload else [])]
        (outcome,), (record,) = self._send_scripts(
            [(self._claim_task_script, claim_keys,
              [execution, int(lease_seconds * 1000), json.dumps(utc_now()), json.dumps(worker), self.task_ttl])],
            then=lambda pipe: pipe.hgetall(keys.task(task_id)), then_same_slot=True)
        claimed_upload = None
        if isinstance(outcome, list):  # {"claimed", upload}
            outcome, claimed_upload = outcome[0], (outcome[1] if len(outcome) > 1 else None)
        parsed = {key.decode(): json.loads(value) for key, value in record.items()} if record else None
        return outcome.decode(), parsed, claimed_upload

    def renew_leases(self, leases: dict[str, str], lease_seconds: float) -> list[str]:
        """Extend the leases of running tasks (task id -> execution token) that their executions still hold;
        returns the tasks whose executions no longer hold theirs."""
        if not leases:
            return []
        renewed = self._run_scripts([(self._renew_lease_script, [keys.task_lease(task_id)],
                                      [execution, int(lease_seconds * 1000)]) for task_id, execution in leases.items()])
        return [task_id for task_id, held in zip(leases, renewed) if not held]

    def release_lease(self, task_id: str, execution: str) -> None:
        """Give up the task's lease, if ``execution`` holds it (the task's next stage claims it then)."""
        self._release_lease_script(keys=[keys.task_lease(task_id)], args=[execution])

    def holds_lease(self, task_id: str, execution: str) -> bool:
        """Whether ``execution`` still holds the task's lease (checked right before an execution writes)."""
        holder = self.redis.get(keys.task_lease(task_id))
        return holder is not None and holder.decode() == execution

    def finish_task(self, task_id: str, state: str, *, result: Any = None, error: dict | None = None,
                    execution: str | None = None, unless_running: bool = False) -> bool:
        """Record the outcome, drop the upload and the lease, and wake anyone waiting on the task; False (nothing
        written) when ``execution`` lost the task to another execution.

        Idempotent: written again after a failed attempt to write it, it says the same.
        """
        assert state in FINISHED_STATES
        fields = {"state": state, "finished_at": utc_now(), "result": result, "error": error}
        args = ["-" if unless_running else execution or "", json.dumps(state), keys.task_done_channel(task_id),
                self.task_ttl,
                *[part for pair in _encode_fields(fields).items() for part in pair]]
        return bool(self._finish_task_script(
            keys=[keys.task(task_id), keys.upload(task_id), keys.task_lease(task_id)], args=args))

    # --- Where buckets are searched: placement and moves between search groups ----------------------

    def placement_overrides(self, collection: str) -> dict[int, str]:
        """The buckets an admin moved, and the search group each is in now."""
        return {int(bucket): group.decode()
                for bucket, group in self.redis.hgetall(keys.collection_placement(collection)).items()}

    def moves(self, collection: str) -> dict[int, str]:
        """The buckets moving, and the search group each is moving to."""
        return {int(bucket): group.decode()
                for bucket, group in self.redis.hgetall(keys.collection_moves(collection)).items()}

    def start_move(self, collection: str, bucket: int, group: str) -> None:
        """Move a bucket to a search group: its processes load it first (:meth:`mark_ready`), then the move is
        committed (:meth:`commit_move`) and queries go there. Asked again, or for another group, it starts over."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.collection_moves(collection), str(bucket), group)
        pipe.delete(keys.bucket_ready(collection, str(bucket)))
        pipe.execute()
        self.redis.sadd(keys.MOVES, collection)

    def collections_moving(self) -> list[str]:
        return sorted(name.decode() for name in self.redis.smembers(keys.MOVES))

    def mark_ready(self, collection: str, bucket: int, process: str) -> set[str]:
        """Note that ``process`` holds the moving bucket loaded; every process that does."""
        ready = keys.bucket_ready(collection, str(bucket))
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(ready, process)
        pipe.expire(ready, 86_400)
        pipe.smembers(ready)
        return {name.decode() for name in pipe.execute()[2]}

    def commit_move(self, collection: str, bucket: int, group: str) -> bool:
        """Send the bucket's searches to ``group`` from now on, if it is still moving there."""
        committed = bool(self._commit_move_script(
            keys=[keys.collection_placement(collection), keys.collection_moves(collection),
                  keys.bucket_ready(collection, str(bucket))], args=[bucket, group]))
        if not self.redis.hlen(keys.collection_moves(collection)):
            self.redis.srem(keys.MOVES, collection)
            if self.redis.hlen(keys.collection_moves(collection)):  # a move started meanwhile: still listed
                self.redis.sadd(keys.MOVES, collection)
        return committed

    def live_processes_of(self, group: str, max_age_seconds: float) -> set[str]:
        """The search processes serving ``group`` that announced themselves within ``max_age_seconds``."""
        live = [name.decode()
                for name in self.redis.zrangebyscore(keys.CONSUMERS, self.now() - max_age_seconds, "+inf")]
        served = self.redis.hmget(keys.CONSUMER_GROUPS, live) if live else []
        return {name for name, groups in zip(live, served) if groups and group in groups.decode().split(",")}

    # --- Scattered searches: one answer per search group, gathered next to the task record -----------

    def expect_answers(self, task_id: str, placement: dict[str, list[int]], timeout_seconds: float,
                       stage: dict | None = None, allow: bool = False) -> None:
        """Note that a query or check was scattered over search groups (``placement``: each group's buckets, kept
        on the task record, with ``stage`` -- what ranks it -- when the caller takes a partial answer): past
        ``timeout_seconds`` without every answer, it is given up on (:meth:`gathers_due`,
        :meth:`missing_answers`). ``allow``: the answers are an allow collection's, for a check."""
        if allow:
            self.redis.delete(keys.task_allow_answers(task_id))  # (a previous allow collection's)
        self._update_task(task_id, {"scatter": placement, "scatter_stage": stage})
        self.redis.zadd(keys.GATHERS, {self._gather_member(task_id, allow): self.now() + timeout_seconds})

    @staticmethod
    def _gather_member(task_id: str, allow: bool) -> str:
        """A gather's entry among those due: the task id, ``:allow`` after it for a check's allow collection."""
        return f"{task_id}:allow" if allow else task_id

    @staticmethod
    def _answers_key(task_id: str, allow: bool) -> str:
        return keys.task_allow_answers(task_id) if allow else keys.task_answers(task_id)

    def gather_answer(self, task_id: str, group: str, answer: dict, expected: int,
                      allow: bool = False) -> dict[str, dict] | None:
        """Record one group's answer; every group's answer once all are in, else None."""
        reply = self._gather_answer_script(keys=[keys.task(task_id), self._answers_key(task_id, allow)],
                                           args=[group, json.dumps(answer), expected, self.task_ttl])
        if reply[0] != b"all":
            return None
        pairs = reply[1:]
        return {pairs[n].decode(): json.loads(pairs[n + 1]) for n in range(0, len(pairs), 2)}

    def gathers_due(self, limit: int = 100) -> list[tuple[str, bool]]:
        """Scattered searches past their time (their answers may be all in by now), at most ``limit``: each
        ``(task id, whether the answers are a check's allow collection's)``."""
        due = [member.decode() for member in
               self.redis.zrangebyscore(keys.GATHERS, "-inf", self.now(), start=0, num=limit)]
        return [(member.removesuffix(":allow"), member.endswith(":allow")) for member in due]

    def missing_answers(self, task_id: str, expected: int, allow: bool = False) -> list[str] | None:
        """The groups that did answer a scattered search past its time that still misses some, to fail it; None
        when it has ended or has every answer. Either way it is no longer due."""
        reply = self._give_up_gather_script(keys=[keys.task(task_id), self._answers_key(task_id, allow)],
                                            args=[expected])
        self.redis.zrem(keys.GATHERS, self._gather_member(task_id, allow))
        return None if not reply else [group.decode() for group in reply[1:]]

    def answers(self, task_id: str) -> dict[str, dict]:
        """The answers of a scattered search recorded so far, by group."""
        return {group.decode(): json.loads(answer)
                for group, answer in self.redis.hgetall(keys.task_answers(task_id)).items()}

    def gather_done(self, task_id: str, allow: bool = False) -> None:
        """A scattered search merged: no longer due, its answers no longer needed."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(keys.GATHERS, self._gather_member(task_id, allow))
        pipe.delete(self._answers_key(task_id, allow))
        pipe.execute()

    def update_callback(self, task_id: str, callback: dict[str, Any]) -> None:
        """Record a task's webhook delivery state and attempts."""
        self._update_task(task_id, {"callback": callback})

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(keys.task(task_id))
        if not raw:
            return None
        return {key.decode(): json.loads(value) for key, value in raw.items()}

    def wait_for_task(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The task record once it has finished, or as it stands after ``timeout`` seconds."""
        record = self.get_task(task_id)
        if record is None or record["state"] in FINISHED_STATES or timeout <= 0:
            return record
        deadline = time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.task_done_channel(task_id))
            while True:
                # Re-read after subscribing and after every wake-up: a message published
                # before the subscription took effect is lost, the record is not.
                record = self.get_task(task_id)
                remaining = deadline - time.monotonic()
                if record is None or record["state"] in FINISHED_STATES or remaining <= 0:
                    return record
                pubsub.get_message(timeout=min(remaining, 1.0))
        finally:
            pubsub.close()

    def _update_task(self, task_id: str, fields: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.task(task_id), mapping=_encode_fields(fields))
        pipe.expire(keys.task(task_id), self.task_ttl)
        pipe.execute()

    # --- Images and vectors -------------------------------------------------------------------

    def save_image(self, collection: str, image_id: str, vector: np.ndarray, metadata: dict,
                   descriptor: Descriptor, pdq: bytes | None = None, thumbnail: bytes | None = None,
                   task_id: str | None = None, written: dict[int, int] | None = None,
                   info: dict[str, Any] | None = None) -> bool:
        """Write vector, metadata, PDQ hash and a change event atomically; True when an existing image was replaced.

        Refuses (``descriptor_mismatch``) to mix vectors of another model or weights into a
        collection. Writing the same image twice leaves one copy, so retries are harmless; the
        same ``task_id`` writing again (a task run twice) changes nothing at all and reports what
        its first write did. ``pdq`` is the stored form of the image's PDQ hash (worker.pdq) and
        ``thumbnail`` a small JPEG of it; None removes any old one.
        """
        return self.save_images(collection, [(image_id, vector, metadata, pdq, thumbnail)], descriptor,
                                task_id=task_id, written=written, info=info) == 1

    def save_images(self, collection: str,
                    images: list[tuple[str, np.ndarray | None, dict, bytes | None, bytes | None]],
                    descriptor: Descriptor | None, task_id: str | None = None,
                    written: dict[int, int] | None = None, info: dict[str, Any] | None = None) -> int:
        """:meth:`save_image` for many ``(id, vector, metadata, pdq, thumbnail)`` in one round trip (each
        written atomically); returns how many replaced. ``written`` gets, for each bucket written, the change
        number that includes these writes (what a write token carries: shared.write_tokens.write_token).
        ``descriptor`` None: PDQ hashes banked alone (every vector None), which neither set nor check the
        collection's descriptor. ``info`` gets :meth:`collection_info` as it stands after the writes (read with them,
        in their round trip, where the store allows).

        A collection not known here to have several buckets is written as one of one bucket, its bucket count
        checked (and fixed at 1) by each write's own script: one round trip for the claim and the writes, the
        registry and ``info``. A collection of several buckets is claimed first, then written bucket by bucket.
        """
        indexed_at = utc_now()
        for _, vector, *_ in images:
            if descriptor is None and vector is not None:
                raise ValueError("a vector needs its descriptor")
            if descriptor is not None and (vector is None or vector.shape != (descriptor.dimension,)):
                raise ValueError(f"vector {None if vector is None else vector.shape} does not match dimension "
                                 f"{descriptor.dimension}")
        if not images:
            return 0
        if collection not in self._several_buckets:
            replaced = self._save_into_one_bucket(collection, images, descriptor, indexed_at, task_id, written, info)
            if replaced is not None:
                return replaced
        no_descriptor = Descriptor("", 0, "")
        buckets = self._claim_collection(collection, descriptor or no_descriptor)
        self._remember_buckets(collection, buckets)
        buckets_written = [keys.bucket_of(image_id, buckets) for image_id, *_ in images]
        calls = []
        for bucket, image in zip(buckets_written, images):
            change_keys = self._change_keys(keys.part(collection, bucket, buckets))
            if buckets == 1 and descriptor is not None:  # checked again with the write (a drop may come between)
                change_keys.append(keys.collection_descriptor(collection))
            calls.append((self._save_script, change_keys, self._save_args(image, descriptor, indexed_at, task_id)))
        # The registry is written after the scripts, apart from the collection's keys (another slot), after every
        # save -- one that found its task's write already done, or one that failed part-way, included: a drop
        # racing this save relies on it (drop_collection).
        try:
            outcomes = self._run_scripts(calls)
            if buckets > 1:
                # A drop between the claim and the writes removed the descriptor and bucket count: claimed again
                # with the count written with, the images just written stay in buckets the collection counts.
                self._claim_collection(collection, descriptor or no_descriptor, buckets, written=images)
        except Exception:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.redis.sadd(keys.COLLECTIONS, collection)
            raise
        self.redis.sadd(keys.COLLECTIONS, collection)
        mismatch = next((outcome for outcome in outcomes if outcome[0] == b"mismatch"), None)
        if mismatch is not None:  # the descriptor is checked by the first write, so nothing was written
            self._refuse_descriptor(mismatch, descriptor or no_descriptor)
        if written is not None:
            for bucket, outcome in zip(buckets_written, outcomes):
                written[bucket] = max(written.get(bucket, 0), int(outcome[2]))
        if info is not None:
            info.update(self.collection_info(collection) or {})
        return sum(int(outcome[1]) for outcome in outcomes)

    def _save_args(self, image: tuple, descriptor: Descriptor | None, indexed_at: str, task_id: str | None,
                   one_bucket: bool = False) -> list:
        """SAVE_IMAGE_LUA's ARGV for one ``(id, vector, metadata, pdq, thumbnail)``."""
        image_id, vector, metadata, pdq, thumbnail = image
        descriptor = descriptor or Descriptor("", 0, "")
        record = {"metadata": metadata, "indexed_at": indexed_at, **({"task": task_id} if task_id else {})}
        first, replacement = (json.dumps(record | ({"replaced": replaced} if task_id else {}))
                              for replaced in (False, True))
        return [image_id, NO_VECTOR if vector is None else encode_vector(vector), first, self.change_stream_length,
                descriptor.model, descriptor.dimension, descriptor.weights, pdq or b"", thumbnail or b"",
                task_id or "", replacement, "1" if one_bucket else ""]

    def _save_into_one_bucket(self, collection: str, images: list, descriptor: Descriptor | None, indexed_at: str,
                              task_id: str | None, written: dict[int, int] | None,
                              info: dict[str, Any] | None) -> int | None:
        """:meth:`save_images` into a collection of one bucket, claimed by the writes themselves; None (nothing
        written) when the collection has several buckets after all.

        The registry is written after the scripts, as the general path does (drop_collection relies on it) --
        in their pipeline on one server, whose commands run in order -- and so is ``info`` read."""
        change_keys = [*self._change_keys(collection), keys.collection_descriptor(collection),
                       keys.collection_buckets(collection)]
        calls = [(self._save_script, change_keys, self._save_args(image, descriptor, indexed_at, task_id, True))
                 for image in images]

        def then(pipe) -> None:
            pipe.sadd(keys.COLLECTIONS, collection)
            if info is not None:
                self._queue_collection_info(pipe, collection)

        try:
            outcomes, after = self._send_scripts(calls, then)
        except Exception:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.redis.sadd(keys.COLLECTIONS, collection)
            raise
        several = next((outcome for outcome in outcomes if outcome[0] == b"buckets"), None)
        if several is not None:
            self._remember_buckets(collection, int(several[1]))
            if len(outcomes) == 1 or all(outcome[0] == b"buckets" for outcome in outcomes):
                return None
            # Dropped and made again with several buckets between these writes (settings refuse another count
            # while the one bucket holds images): the drop took those written before it; the rest were not.
            raise LookalikeError("collection_changed", "The collection was dropped and made again with another "
                                 "number of buckets while these images were written; write them again.",
                                 {"collection": collection, "buckets": int(several[1])})
        mismatch = next((outcome for outcome in outcomes if outcome[0] == b"mismatch"), None)
        if mismatch is not None:  # the descriptor is checked by the first write, so nothing was written
            self._refuse_descriptor(mismatch, descriptor or Descriptor("", 0, ""))
        if written is not None:
            written[0] = max([written.get(0, 0), *(int(outcome[2]) for outcome in outcomes)])
        if info is not None:
            info.update(self._collection_info_from(collection, after[1:], True) or {})
        return sum(int(outcome[1]) for outcome in outcomes)

    def _remember_buckets(self, collection: str, buckets: int) -> None:
        """Which collections have several buckets, as last seen here: they are claimed before they are written
        (a guess only -- every write checks the count -- kept for as many collections as are written)."""
        if buckets > 1:
            if len(self._several_buckets) >= 10_000:
                self._several_buckets.clear()
            self._several_buckets.add(collection)
        else:
            self._several_buckets.discard(collection)

    def _claim_collection(self, collection: str, descriptor: Descriptor, buckets: int | None = None,
                          written: list | None = None) -> int:
        """Check (or set) the collection's descriptor and fix its bucket count; the bucket count. After a save
        into ``buckets`` buckets (``written``: its images), a collection made again meanwhile with another count
        has those images taken out again, and the save fails (``collection_changed``)."""
        outcome = self._claim_collection_script(
            keys=[keys.collection_descriptor(collection), keys.collection_buckets(collection)],
            args=[descriptor.model, descriptor.dimension, descriptor.weights, buckets or ""])
        if outcome[0] == b"mismatch":
            self._refuse_descriptor(outcome, descriptor)
        if outcome[0] == b"conflict":
            for image_id, *_ in written or []:
                self._delete_script(keys=self._change_keys(keys.part_of(collection, image_id, buckets or 1)),
                                    args=[image_id, self.change_stream_length])
            raise LookalikeError("collection_changed", "The collection was dropped and made again with another "
                                 "number of buckets while these images were written; write them again.",
                                 {"collection": collection, "buckets": int(outcome[1])})
        return int(outcome[1])

    @staticmethod
    def _refuse_descriptor(mismatch: list, descriptor: Descriptor) -> None:
        stored = {"model": mismatch[1].decode(), "dimension": mismatch[2].decode(), "weights": mismatch[3].decode()}
        raise LookalikeError(
            "descriptor_mismatch",
            "This collection holds vectors of another descriptor (model, pooling, input or weights), which "
            "never mix with these; index into a new collection, or re-index this one: drop it "
            "(DELETE /v1/collections/{collection}) and index its images again.",
            {"collection": stored, "worker": descriptor.to_mapping()},
        )

    # --- Buckets ----------------------------------------------------------------------------------

    def buckets(self, collection: str) -> int:
        """The collection's number of buckets (1 until a write or its settings fix it)."""
        return int(self.redis.get(keys.collection_buckets(collection)) or 1)

    def parts(self, collection: str) -> list[str]:
        """The parts holding the collection's images (shared.keys): the collection itself, or one per bucket."""
        return keys.parts(collection, self.buckets(collection))

    def _part_of(self, collection: str, image_id: str) -> str:
        return keys.part_of(collection, image_id, self.buckets(collection))

    def _by_part(self, collection: str, image_ids: list[str]) -> dict[str, list[int]]:
        """The positions in ``image_ids`` of the ids of each part holding some."""
        buckets = self.buckets(collection)
        positions: dict[str, list[int]] = {}
        for position, image_id in enumerate(image_ids):
            positions.setdefault(keys.part_of(collection, image_id, buckets), []).append(position)
        return positions

    def get_thumbnail(self, collection: str, image_id: str) -> bytes | None:
        return self.redis.hget(keys.collection_thumbnails(self._part_of(collection, image_id)), image_id)

    def get_image(self, collection: str, image_id: str) -> dict[str, Any] | None:
        """An image's metadata and when it was indexed, plus its PDQ hash (hex) and quality where it has one."""
        part = self._part_of(collection, image_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(keys.collection_images(part), image_id)
        pipe.hget(keys.collection_pdq(part), image_id)
        raw, pdq = pipe.execute()
        if raw is None:
            return None
        record = json.loads(raw)  # also holds which task wrote it (effect-once bookkeeping): not shown
        image = {"id": image_id, "metadata": record["metadata"], "indexed_at": record["indexed_at"]}
        if pdq is not None:  # stored as 32 hash bytes and one quality byte
            image["pdq"] = {"hash": pdq[:32].hex(), "quality": pdq[32]}
        return image

    def delete_image(self, collection: str, image_id: str, written: dict[int, int] | None = None) -> bool:
        """Remove vector and metadata and record a change event, atomically; False if there was no such image.
        ``written`` gets the bucket and change number of the delete (a write token's)."""
        buckets = self.buckets(collection)
        bucket = keys.bucket_of(image_id, buckets)
        seq = int(self._delete_script(keys=self._change_keys(keys.part(collection, bucket, buckets)),
                                      args=[image_id, self.change_stream_length]))
        if seq and written is not None:
            written[bucket] = seq
        return bool(seq)

    def drop_collection(self, collection: str) -> int:
        """Delete every image, hash, thumbnail and setting of a collection at once; returns how many images.

        What re-indexing with another descriptor starts from: vectors of different
        descriptors never mix, so a collection changes descriptor by being emptied.

        The registry (``lookalike:collections``, another slot) is updated after the script: the name is
        removed, then put back if the collection holds anything again by then. A save (or settings write)
        racing the drop registers its collection after its own script, so whichever order the steps
        interleave in, a collection left holding images stays registered; at worst the registry names a
        collection that is gone, which listings and :meth:`collection_info` pass over.
        """
        whole = [keys.collection_descriptor(collection), keys.collection_settings(collection),
                 keys.collection_whitening(collection), keys.collection_buckets(collection),
                 keys.collection_placement(collection), keys.collection_moves(collection)]
        parts = self.parts(collection)
        if len(parts) == 1:
            images = int(self._drop_script(keys=[*self._change_keys(collection), *whole],
                                           args=[self.change_stream_length]))
        else:  # each bucket emptied with its "drop" event, then the collection's own keys
            images = sum(self._run_scripts([(self._drop_script, self._change_keys(part), [self.change_stream_length])
                                            for part in parts]))
            self.redis.unlink(*whole)
        self.redis.srem(keys.COLLECTIONS, collection)
        if self._existing([collection]):
            self.redis.sadd(keys.COLLECTIONS, collection)
        return images

    def _existing(self, names: list[str]) -> list[str]:
        """Those of ``names`` whose collection holds anything: a descriptor (images were saved since its last
        drop), settings, or vectors. One round trip (one per node on a cluster)."""
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.collection_descriptor(name), keys.collection_settings(name),
                        keys.collection_buckets(name), keys.collection_vectors(name))
        return [name for name, found in zip(names, pipe.execute()) if found]

    # A part's records, as replicas read them (a part: a collection of one bucket, or one bucket; shared.keys).

    def change_position(self, part: str) -> tuple[int, str]:
        """Number and stream id of the part's last change event, read together ((0, "0-0"): none)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(keys.collection_change_seq(part))
        pipe.xrevrange(keys.collection_changes(part), count=1)
        seq, last = pipe.execute()
        return int(seq or 0), last[0][0].decode() if last else "0-0"

    def count_vectors(self, part: str) -> int:
        return self.redis.hlen(keys.collection_vectors(part))

    def scan_vectors(self, part: str, dimension: int, chunk: int):
        """Yield the part's (id, vector) pairs in chunks of about ``chunk``, without one huge reply."""
        cursor = 0
        while True:
            cursor, stored = self.redis.hscan(keys.collection_vectors(part), cursor, count=chunk)
            stored = {image_id: blob for image_id, blob in stored.items() if blob != NO_VECTOR}
            if stored:
                ids = [image_id.decode() for image_id in stored]
                yield list(zip(ids, decode_vectors(list(stored.values()), dimension)))
            if cursor == 0:
                return

    def changes_since(self, part: str, stream_id: str, limit: int) -> list[Change]:
        """The part's change events after ``stream_id``, oldest first, at most ``limit``."""
        entries = self.redis.xrange(keys.collection_changes(part), min=f"({stream_id}", count=limit)
        return [
            Change(entry_id.decode(), int(fields[b"seq"]), fields[b"op"].decode(), fields[b"id"].decode())
            for entry_id, fields in entries
        ]

    def get_vectors(self, part: str, image_ids: list[str], dimension: int) -> list[np.ndarray | None]:
        """The stored vector of each id of the part, or None where there is none (deleted since, or a hash alone)."""
        if not image_ids:
            return []
        blobs = self.redis.hmget(keys.collection_vectors(part), image_ids)
        return [_vector(blob, dimension) for blob in blobs]

    def get_vectors_and_hashes(self, part: str, image_ids: list[str],
                               dimension: int) -> list[tuple[np.ndarray | None, bytes | None]]:
        """Each id's stored vector and PDQ hash (stored form) in the part, read together; None where absent (a hash
        banked alone has no vector)."""
        if not image_ids:
            return []
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(keys.collection_vectors(part), image_ids)
        pipe.hmget(keys.collection_pdq(part), image_ids)
        blobs, hashes = pipe.execute()
        return [(_vector(blob, dimension), pdq) for blob, pdq in zip(blobs, hashes)]

    def sample_vectors(self, collection: str, count: int, dimension: int) -> np.ndarray:
        """Up to ``count`` of the collection's vectors, distinct and chosen at random (all when it holds fewer);
        from each bucket in proportion to its size."""
        parts = self.parts(collection)
        if len(parts) == 1:
            stored = self.redis.hrandfield(keys.collection_vectors(collection), count, withvalues=True)
            return decode_vectors([blob for blob in stored[1::2] if blob != NO_VECTOR], dimension)
        sizes = self._sizes(parts)
        total = sum(sizes) or 1
        pipe = self.redis.pipeline(transaction=False)
        for part, size in zip(parts, sizes):
            pipe.hrandfield(keys.collection_vectors(part), -(-count * size // total), withvalues=True)
        blobs = [blob for stored in pipe.execute() for blob in stored[1::2] if blob != NO_VECTOR]
        return decode_vectors(blobs[:count], dimension)

    def _sizes(self, parts: list[str]) -> list[int]:
        """The number of images in each part (one round trip, one per node on a cluster)."""
        pipe = self.redis.pipeline(transaction=False)
        for part in parts:
            pipe.hlen(keys.collection_vectors(part))
        return pipe.execute()

    # --- Whitening ----------------------------------------------------------------------------

    def save_whitening(self, collection: str, whitening: StoredWhitening, model: str) -> bool:
        """Store a learned whitening with a "whiten" change event; False (nothing written) when the collection
        no longer holds vectors of ``model`` or no longer wants whitening."""
        fields = {"mean": encode_vector(whitening.mean), "projection": encode_vector(whitening.projection),
                  "input_dimension": whitening.projection.shape[0], "dimensions": whitening.projection.shape[1],
                  "learned_from": whitening.learned_from, "collection_size": whitening.collection_size,
                  "learned_at": whitening.learned_at}
        parts = self.parts(collection)
        whitening_keys = [keys.collection_whitening(collection), keys.collection_descriptor(collection),
                          keys.collection_settings(collection)]
        if len(parts) == 1:
            whitening_keys += [keys.collection_change_seq(collection), keys.collection_changes(collection)]
        args = [self.change_stream_length, model, *[value for pair in fields.items() for value in pair]]
        saved = bool(self._save_whitening_script(keys=whitening_keys, args=args))
        if saved and len(parts) > 1:
            self._announce(parts, "whiten")
        return saved

    def _announce(self, parts: list[str], op: str) -> None:
        """A change of the whole collection (``whiten``) as an event in each of its buckets' streams."""
        self._run_scripts([(self._append_event_script,
                            [keys.collection_change_seq(part), keys.collection_changes(part)],
                            [self.change_stream_length, op]) for part in parts])

    def get_whitening(self, collection: str) -> StoredWhitening | None:
        stored = self.redis.hgetall(keys.collection_whitening(collection))
        if not stored:
            return None
        rows, columns = int(stored[b"input_dimension"]), int(stored[b"dimensions"])
        return StoredWhitening(
            mean=np.frombuffer(stored[b"mean"], VECTOR_DTYPE).copy(),
            projection=np.frombuffer(stored[b"projection"], VECTOR_DTYPE).reshape(rows, columns).copy(),
            learned_from=int(stored[b"learned_from"]), collection_size=int(stored[b"collection_size"]),
            learned_at=stored[b"learned_at"].decode())

    def claim_whitening(self, collection: str, seconds: int) -> bool:
        """True for one caller at a time (for ``seconds`` at most): whoever gets it has the whitening learned."""
        return bool(self.redis.set(keys.collection_whitening_claim(collection), b"1", nx=True, ex=seconds))

    def release_whitening_claim(self, collection: str) -> None:
        self.redis.delete(keys.collection_whitening_claim(collection))

    def scan_hashes(self, part: str, chunk: int):
        """Yield the part's (id, stored PDQ hash) pairs in chunks of about ``chunk``."""
        cursor = 0
        while True:
            cursor, stored = self.redis.hscan(keys.collection_pdq(part), cursor, count=chunk)
            if stored:
                yield [(image_id.decode(), pdq) for image_id, pdq in stored.items()]
            if cursor == 0:
                return

    @staticmethod
    def _change_keys(collection: str) -> list[str]:
        """The keys both write scripts take first: vectors, images, change counter, change stream, PDQ hashes,
        thumbnails."""
        return [keys.collection_vectors(collection), keys.collection_images(collection),
                keys.collection_change_seq(collection), keys.collection_changes(collection),
                keys.collection_pdq(collection), keys.collection_thumbnails(collection)]

    def get_metadata(self, collection: str, image_ids: list[str]) -> list[dict | None]:
        """Each image's metadata (None: no such image), read from the buckets holding them in one round trip."""
        if not image_ids:
            return []
        by_part = self._by_part(collection, image_ids)
        pipe = self.redis.pipeline(transaction=False)
        for part, positions in by_part.items():
            pipe.hmget(keys.collection_images(part), [image_ids[position] for position in positions])
        raw: list = [None] * len(image_ids)
        for positions, values in zip(by_part.values(), pipe.execute()):
            for position, value in zip(positions, values):
                raw[position] = value
        return [None if value is None else json.loads(value)["metadata"] for value in raw]

    def list_collections(self) -> list[str]:
        """Every collection holding images or settings (the registry's names, less any dropped meanwhile)."""
        return self._existing(sorted(name.decode() for name in self.redis.smembers(keys.COLLECTIONS)))

    def collection_sizes(self) -> dict[str, int]:
        """Images per collection, for every collection holding images or settings."""
        names = self.list_collections()
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.get(keys.collection_buckets(name))
        parts = {name: keys.parts(name, int(buckets or 1)) for name, buckets in zip(names, pipe.execute())}
        sizes = iter(self._sizes([part for name in names for part in parts[name]]))
        return {name: sum(next(sizes) for _ in parts[name]) for name in names}

    def list_image_ids(self, collection: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """A page of the collection's image ids: ``(next cursor, ids)``; cursor 0 starts and ends a walk.

        Redis' HSCAN: every id present for the whole walk is returned at least once. A collection of
        several buckets is walked one bucket after another: the cursor is HSCAN's cursor times the bucket
        count, plus the bucket.
        """
        buckets = self.buckets(collection)
        bucket, scan_cursor = cursor % buckets, cursor // buckets
        # (No NOVALUES: that needs Redis 7.4; the metadata records are small.)
        scan_cursor, page = self.redis.hscan(keys.collection_images(keys.part(collection, bucket, buckets)),
                                             scan_cursor, count=count)
        if scan_cursor == 0:  # this bucket is done: the next one, from its start (0 after the last)
            bucket, scan_cursor = (bucket + 1) % buckets, 0
        return scan_cursor * buckets + bucket, [image_id.decode() for image_id in page]

    def put_collection_settings(self, collection: str, settings: dict[str, Any]) -> int:
        """Replace the collection's settings; whitening turned off forgets any learned one (a "whiten" event).
        ``buckets`` in them fixes the bucket count, which a collection that holds (or held) images keeps:
        another is refused (``buckets_fixed``) and nothing changes. Returns the bucket count."""
        settings = dict(settings)
        wanted = settings.pop("buckets", None)
        buckets = wanted or self.buckets(collection)
        settings_keys = [keys.collection_settings(collection), keys.collection_whitening(collection),
                         keys.collection_buckets(collection), keys.collection_vectors(collection)]
        if buckets == 1:
            settings_keys += [keys.collection_change_seq(collection), keys.collection_changes(collection)]
        outcome = self._put_settings_script(keys=settings_keys, args=[
            json.dumps(settings), int(bool(settings.get("whitening"))), self.change_stream_length,
            "" if wanted is None else str(wanted)])
        if outcome[0] == b"fixed":
            raise LookalikeError("buckets_fixed", "A collection's number of buckets is fixed when it is first "
                                 "written; to change it, drop the collection and index its images again.",
                                 {"buckets": int(outcome[1]), "requested": wanted})
        if int(outcome[1]) and buckets > 1:  # its whitening forgotten: each bucket's replicas are told
            self._announce(keys.parts(collection, buckets), "whiten")
        self.redis.sadd(keys.COLLECTIONS, collection)  # after the script, as a save does (drop_collection)
        return buckets

    def collection_info(self, collection: str, count_images: bool = True) -> dict[str, Any] | None:
        """The collection as GET /v1/collections/{c} shows it; None unless it holds images (or had some since its
        last drop: its descriptor stays) or settings. Read from its own keys only, in one round trip -- two for a
        collection of several buckets when ``count_images`` (its ``images`` None otherwise: what a search
        stage reads, which needs the settings, not a size per bucket).

        (No MULTI here: redis-py's cluster transactions hand back HGETALL's raw reply, a flat list.)"""
        pipe = self.redis.pipeline(transaction=False)
        self._queue_collection_info(pipe, collection)
        return self._collection_info_from(collection, pipe.execute(), count_images)

    @staticmethod
    def _queue_collection_info(pipe, collection: str) -> None:
        """What :meth:`collection_info` reads, queued on ``pipe``: five commands, all of the collection's slot."""
        pipe.hgetall(keys.collection_descriptor(collection))
        pipe.get(keys.collection_settings(collection))
        pipe.hmget(keys.collection_whitening(collection), "learned_from", "collection_size", "learned_at", "dimensions")
        pipe.get(keys.collection_buckets(collection))
        pipe.hlen(keys.collection_vectors(collection))  # (all its images when it has one bucket)

    def _collection_info_from(self, collection: str, replies: list, count_images: bool) -> dict[str, Any] | None:
        """:meth:`collection_info` from the replies of :meth:`_queue_collection_info`'s commands."""
        descriptor, settings, whitening, fixed, count = replies
        buckets = int(fixed or 1)
        if buckets > 1:
            count = sum(self._sizes(keys.parts(collection, buckets))) if count_images else None
        if not (count or descriptor or settings or fixed):
            return None
        descriptor = {k.decode(): v.decode() for k, v in descriptor.items()}
        return {
            "collection": collection,
            "images": count,
            "dimension": int(descriptor["dimension"]) if descriptor else None,
            "model": descriptor.get("model"),
            "weights": descriptor.get("weights"),
            "settings": DEFAULT_COLLECTION_SETTINGS | (json.loads(settings) if settings else {}) | {"buckets": buckets},
            "configured": settings is not None,  # settings were PUT: its matches get verdicts
            # the whitening learned (what searches use while the setting is on), or None
            "whitening": None if whitening[0] is None else whitening_summary(*whitening),
        }

    # --- Worker processes and the task messages they hold (for resuming a dead worker's tasks) ------

    def beat_consumer(self, name: str, held: set[str], ttl_seconds: float, groups: tuple[str, ...] = ()) -> None:
        """Announce a worker process (any role) alive, with the delivery tags of the task messages it holds and
        the search groups it serves."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.CONSUMERS, {name: self.now()})
        if groups:
            pipe.hset(keys.CONSUMER_GROUPS, name, ",".join(groups))
        pipe.delete(keys.consumer_held(name))
        if held:
            pipe.sadd(keys.consumer_held(name), *held)
            pipe.expire(keys.consumer_held(name), max(1, int(ttl_seconds)))
        pipe.execute()

    def forget_consumer(self, name: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.CONSUMERS, name)
        pipe.hdel(keys.CONSUMER_GROUPS, name)
        pipe.delete(keys.consumer_held(name))
        pipe.execute()

    def held_by_live_consumers(self, max_age_seconds: float) -> set[str]:
        """Delivery tags held by worker processes that announced themselves within ``max_age_seconds``;
        processes silent for a day are forgotten."""
        now = self.now()
        self.redis.zremrangebyscore(keys.CONSUMERS, "-inf", now - 86_400)
        live = self.redis.zrangebyscore(keys.CONSUMERS, now - max_age_seconds, "+inf")
        if not live:
            return set()
        return {tag.decode() for tag in self.redis.sunion([keys.consumer_held(name.decode()) for name in live])}

    def now(self) -> float:
        """Redis' clock (unix seconds): what every process's liveness is measured by, whatever its own clock says.
        On a cluster, the clock of the node holding the consumers' records, the same one for every process."""
        if self.cluster:
            seconds, microseconds = self.redis.time(target_nodes=self.redis.get_node_from_key(keys.CONSUMERS))
        else:
            seconds, microseconds = self.redis.time()
        return seconds + microseconds / 1e6

    def claim_reaper(self, name: str, seconds: float) -> bool:
        """True for one process at a time (for ``seconds``): it restores the messages of dead workers."""
        return bool(self.redis.set(keys.REAPER, name, nx=True, px=int(seconds * 1000)))

    # --- Worker heartbeats (for /readyz) -------------------------------------------------------

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.WORKERS, {worker: time.time()})
        pipe.hset(keys.WORKERS_INFO, worker, json.dumps(info))
        pipe.execute()

    def remove_worker(self, worker: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.WORKERS, worker)
        pipe.hdel(keys.WORKERS_INFO, worker)
        pipe.execute()

    def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        """Workers that announced a loaded model within the last ``max_age_seconds``."""
        names = self.redis.zrangebyscore(keys.WORKERS, time.time() - max_age_seconds, "+inf")
        if not names:
            return []
        infos = self.redis.hmget(keys.WORKERS_INFO, names)
        return [json.loads(info) | {"name": name.decode()} for name, info in zip(names, infos) if info]


def _encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    # Every task field is stored as JSON so that None, numbers and objects come back as sent.
    return {key: json.dumps(value) for key, value in fields.items()}

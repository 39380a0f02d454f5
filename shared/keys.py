"""Every Redis key Lookalike uses. Nothing outside this module formats a key.

Layout (all under the ``lookalike:`` prefix, so Celery's own keys never collide). Braces are Redis
Cluster hash tags: only the part between the first ``{`` and ``}`` picks a key's slot, so every key a
Lua script or MULTI/EXEC touches shares one slot (a collection's keys, a task's keys, the worker
heartbeats, the consumers and their held sets). ``<...>`` marks a variable part.

  lookalike:collections                    set    names of collections written (an index for listings;
                                                  updated outside the scripts, may name a dropped one)
  lookalike:col:{<p>}:vectors              hash   image id -> 512 float32, little-endian (2 KiB)
  lookalike:col:{<p>}:images               hash   image id -> JSON {"metadata", "indexed_at"}
  lookalike:col:{<p>}:pdq                  hash   image id -> PDQ hash (32 bytes) and its quality (1 byte)
  lookalike:col:{<p>}:thumbs               hash   image id -> a small JPEG of the image (for the web page)
  lookalike:col:{<p>}:changes              stream change events (put/del of an id, drop, whiten), for replicas
  lookalike:col:{<p>}:seq                  string number of the last change event (detects trimmed gaps)
  lookalike:col:{<c>}:descriptor           hash   model, dimension and weights of its vectors
  lookalike:col:{<c>}:settings             string JSON of the collection's settings (match threshold, kind, ...)
  lookalike:col:{<c>}:whitening            hash   its learned PCA-whitening: mean, projection, when and from what
  lookalike:col:{<c>}:buckets              string its number of buckets: fixed by its first write (or settings)
  lookalike:col:{<c>}:placement            hash   bucket -> the search group an admin moved it to
  lookalike:col:{<c>}:moves                hash   bucket -> the search group it is moving to (loading there)
  lookalike:col:{<c>}:moves:<bucket>:ready set    the processes of that group that have loaded it
  lookalike:col:{<c>}:whitening:claim      string held (with a TTL) while a worker learns the whitening
  lookalike:task:{<task>}                  hash   the task resource served by GET /v1/tasks/{id}
  lookalike:task:{<task>}:upload           string uploaded image bytes, until the worker has them
  lookalike:task:{<task>}:lease            string token of the execution running the task (TTL, renewed while it runs)
  lookalike:task:{<task>}:done             pubsub channel announcing the task has finished
  lookalike:task:{<task>}:answers          hash   search group -> JSON of its answer to a scattered query or check
  lookalike:task:{<task>}:answers:allow    hash   the same for a check's allow collection over several groups
  lookalike:gathers                        zset   task id -> when its scattered search is given up (unix seconds)
  lookalike:moves                          set    collections with a bucket moving between search groups
  lookalike:batch:<batch>                  string JSON: a bulk upload's collection and items
  lookalike:idem:<key id>:<sha256>         string JSON: a POST's fingerprint and response, for Idempotency-Key
  lookalike:{workers}                      zset   worker name -> last heartbeat (unix seconds)
  lookalike:{workers}:info                 hash   worker name -> JSON of its model and weights
  lookalike:{consumers}                    zset   every worker process (any role) -> last heartbeat (unix seconds)
  lookalike:{consumers}:held:<name>        set    delivery tags of the task messages that process holds
  lookalike:{consumers}:groups             hash   search process -> the search groups it serves (comma-separated)
  lookalike:reaper                         string held (TTL) by the process restoring messages of dead workers
  lookalike:apikeys                        hash   key id -> JSON of an API key (secret hashed)

``<p>`` is a *part* of a collection: the collection's name ``<c>`` when it has one bucket (the
default), else ``<c>/<bucket>`` for each of its buckets, an image's bucket fixed by its id
(:func:`bucket_of`). Each part is a hash tag of its own, with its own change stream: a sharded
collection's buckets spread over a cluster's nodes. The collection-level keys stay under ``{<c>}``.

Collection names never hold braces or "/" (shared.inputs.COLLECTION_NAME), nor do task ids (uuid4 hex).
"""

import zlib

PREFIX = "lookalike"

COLLECTIONS = f"{PREFIX}:collections"
# One tag for the heartbeats (zset and info hash written in one transaction), another for the
# consumers and their held sets (one transaction, and one SUNION over the held sets).
WORKERS = f"{PREFIX}:{{workers}}"
WORKERS_INFO = f"{PREFIX}:{{workers}}:info"
CONSUMERS = f"{PREFIX}:{{consumers}}"
API_KEYS = f"{PREFIX}:apikeys"
REAPER = f"{PREFIX}:reaper"
GATHERS = f"{PREFIX}:gathers"
MOVES = f"{PREFIX}:moves"
CONSUMER_GROUPS = f"{PREFIX}:{{consumers}}:groups"


def _collection(collection: str) -> str:
    return f"{PREFIX}:col:{{{collection}}}"


# --- Parts: where a collection's images live --------------------------------------------------------

def part(collection: str, bucket: int, buckets: int) -> str:
    """The part holding one bucket of a collection of ``buckets`` buckets (the collection itself for one)."""
    return collection if buckets == 1 else f"{collection}/{bucket}"


def parts(collection: str, buckets: int) -> list[str]:
    """Every part of a collection of ``buckets`` buckets, in bucket order."""
    return [part(collection, bucket, buckets) for bucket in range(buckets)]


def collection_of(part_name: str) -> str:
    """The collection a part belongs to."""
    return part_name.split("/", 1)[0]


def bucket_of(image_id: str, buckets: int) -> int:
    """An image's bucket: CRC-32 of its id, so the same for every process and every release. The bucket count
    of a collection never changes while it holds images: no id is ever rehashed."""
    return zlib.crc32(image_id.encode()) % buckets


def part_of(collection: str, image_id: str, buckets: int) -> str:
    return part(collection, bucket_of(image_id, buckets), buckets)


# --- Keys of a part (a collection's images) ---------------------------------------------------------


def collection_vectors(part_name: str) -> str:
    return f"{_collection(part_name)}:vectors"


def collection_images(part_name: str) -> str:
    return f"{_collection(part_name)}:images"


def collection_pdq(part_name: str) -> str:
    return f"{_collection(part_name)}:pdq"


def collection_thumbnails(part_name: str) -> str:
    return f"{_collection(part_name)}:thumbs"


def collection_changes(part_name: str) -> str:
    return f"{_collection(part_name)}:changes"


def collection_change_seq(part_name: str) -> str:
    return f"{_collection(part_name)}:seq"


# --- Keys of the collection as a whole ------------------------------------------------------------

def collection_descriptor(collection: str) -> str:
    return f"{_collection(collection)}:descriptor"


def collection_settings(collection: str) -> str:
    return f"{_collection(collection)}:settings"


def collection_whitening(collection: str) -> str:
    return f"{_collection(collection)}:whitening"


def collection_buckets(collection: str) -> str:
    return f"{_collection(collection)}:buckets"


def collection_placement(collection: str) -> str:
    return f"{_collection(collection)}:placement"


def collection_moves(collection: str) -> str:
    return f"{_collection(collection)}:moves"


def bucket_ready(collection: str, bucket: str) -> str:
    return f"{_collection(collection)}:moves:{bucket}:ready"


def collection_whitening_claim(collection: str) -> str:
    return f"{_collection(collection)}:whitening:claim"


def _task(task_id: str) -> str:
    return f"{PREFIX}:task:{{{task_id}}}"


def task(task_id: str) -> str:
    return _task(task_id)


def upload(task_id: str) -> str:
    return f"{_task(task_id)}:upload"


def task_lease(task_id: str) -> str:
    return f"{_task(task_id)}:lease"


def task_answers(task_id: str) -> str:
    return f"{_task(task_id)}:answers"


def task_allow_answers(task_id: str) -> str:
    return f"{_task(task_id)}:answers:allow"


def task_done_channel(task_id: str) -> str:
    return f"{_task(task_id)}:done"


def consumer_held(name: str) -> str:
    return f"{CONSUMERS}:held:{name}"


def batch(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def idempotency(principal: str, key_digest: str) -> str:
    return f"{PREFIX}:idem:{principal}:{key_digest}"


# Matches every key above; for tools and tests that look at the whole store.
ALL_KEYS_PATTERN = f"{PREFIX}:*"


def collection_keys_pattern(collection: str) -> str:
    """A SCAN pattern matching every key of one collection, its buckets' too (Redis' glob treats braces as plain
    characters: ``[}/]`` is the closing brace of ``{<c>}`` or the slash of ``{<c>/<bucket>}``)."""
    return f"{PREFIX}:col:{{{collection}[}}/]*"


# The names of the layout before hash tags (until issue 14), for shared.migrate_keys only.
class Legacy:
    COLLECTION_KEYS_PATTERN = f"{PREFIX}:col:*"
    TASK_KEYS_PATTERN = f"{PREFIX}:task:*"
    UPLOAD_KEYS_PATTERN = f"{PREFIX}:upload:*"
    HELD_KEYS_PATTERN = f"{PREFIX}:consumer:*:held"
    WORKERS = f"{PREFIX}:workers"
    WORKERS_INFO = f"{PREFIX}:workers:info"
    CONSUMERS = f"{PREFIX}:consumers"
    # what follows "lookalike:col:<c>:" -> the function giving the key its new name
    COLLECTION_SUFFIXES = {
        "vectors": collection_vectors, "images": collection_images, "pdq": collection_pdq,
        "thumbs": collection_thumbnails, "descriptor": collection_descriptor, "settings": collection_settings,
        "whitening": collection_whitening, "whitening:claim": collection_whitening_claim,
        "changes": collection_changes, "seq": collection_change_seq,
    }

    @staticmethod
    def collection_key(collection: str, suffix: str) -> str:
        return f"{PREFIX}:col:{collection}:{suffix}"

    @staticmethod
    def task(task_id: str) -> str:
        return f"{PREFIX}:task:{task_id}"

    @staticmethod
    def task_lease(task_id: str) -> str:
        return f"{PREFIX}:task:{task_id}:lease"

    @staticmethod
    def upload(task_id: str) -> str:
        return f"{PREFIX}:upload:{task_id}"

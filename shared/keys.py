"""Every Redis key Lookalike uses. Nothing outside this module formats a key.

Layout (all under the ``lookalike:`` prefix, so Celery's own keys never collide). Braces are Redis
Cluster hash tags: only the part between the first ``{`` and ``}`` picks a key's slot, so every key a
Lua script or MULTI/EXEC touches shares one slot (a collection's keys, a task's keys, the worker
heartbeats, the consumers and their held sets). ``<...>`` marks a variable part.

  lookalike:collections                    set    names of collections written (an index for listings;
                                                  updated outside the scripts, may name a dropped one)
  lookalike:col:{<c>}:vectors              hash   image id -> 512 float32, little-endian (2 KiB)
  lookalike:col:{<c>}:images               hash   image id -> JSON {"metadata", "indexed_at"}
  lookalike:col:{<c>}:pdq                  hash   image id -> PDQ hash (32 bytes) and its quality (1 byte)
  lookalike:col:{<c>}:thumbs               hash   image id -> a small JPEG of the image (for the web page)
  lookalike:col:{<c>}:descriptor           hash   model, dimension and weights of its vectors
  lookalike:col:{<c>}:settings             string JSON of the collection's settings (match threshold, kind)
  lookalike:col:{<c>}:whitening            hash   its learned PCA-whitening: mean, projection, when and from what
  lookalike:col:{<c>}:whitening:claim      string held (with a TTL) while a worker learns the whitening
  lookalike:col:{<c>}:changes              stream change events (put/del of an id, drop, whiten), for replicas
  lookalike:col:{<c>}:seq                  string number of the last change event (detects trimmed gaps)
  lookalike:task:{<task>}                  hash   the task resource served by GET /v1/tasks/{id}
  lookalike:task:{<task>}:upload           string uploaded image bytes, until the worker has them
  lookalike:task:{<task>}:lease            string token of the execution running the task (TTL, renewed while it runs)
  lookalike:task:{<task>}:done             pubsub channel announcing the task has finished
  lookalike:batch:<batch>                  string JSON: a bulk upload's collection and items
  lookalike:idem:<key id>:<sha256>         string JSON: a POST's fingerprint and response, for Idempotency-Key
  lookalike:{workers}                      zset   worker name -> last heartbeat (unix seconds)
  lookalike:{workers}:info                 hash   worker name -> JSON of its model and weights
  lookalike:{consumers}                    zset   every worker process (any role) -> last heartbeat (unix seconds)
  lookalike:{consumers}:held:<name>        set    delivery tags of the task messages that process holds
  lookalike:reaper                         string held (TTL) by the process restoring messages of dead workers
  lookalike:apikeys                        hash   key id -> JSON of an API key (secret hashed)

Collection names never hold braces (shared.schemas.COLLECTION_NAME), nor do task ids (uuid4 hex).
"""

PREFIX = "lookalike"

COLLECTIONS = f"{PREFIX}:collections"
# One tag for the heartbeats (zset and info hash written in one transaction), another for the
# consumers and their held sets (one transaction, and one SUNION over the held sets).
WORKERS = f"{PREFIX}:{{workers}}"
WORKERS_INFO = f"{PREFIX}:{{workers}}:info"
CONSUMERS = f"{PREFIX}:{{consumers}}"
API_KEYS = f"{PREFIX}:apikeys"
REAPER = f"{PREFIX}:reaper"


def _collection(collection: str) -> str:
    return f"{PREFIX}:col:{{{collection}}}"


def collection_vectors(collection: str) -> str:
    return f"{_collection(collection)}:vectors"


def collection_images(collection: str) -> str:
    return f"{_collection(collection)}:images"


def collection_pdq(collection: str) -> str:
    return f"{_collection(collection)}:pdq"


def collection_thumbnails(collection: str) -> str:
    return f"{_collection(collection)}:thumbs"


def collection_descriptor(collection: str) -> str:
    return f"{_collection(collection)}:descriptor"


def collection_settings(collection: str) -> str:
    return f"{_collection(collection)}:settings"


def collection_whitening(collection: str) -> str:
    return f"{_collection(collection)}:whitening"


def collection_whitening_claim(collection: str) -> str:
    return f"{_collection(collection)}:whitening:claim"


def collection_changes(collection: str) -> str:
    return f"{_collection(collection)}:changes"


def collection_change_seq(collection: str) -> str:
    return f"{_collection(collection)}:seq"


def _task(task_id: str) -> str:
    return f"{PREFIX}:task:{{{task_id}}}"


def task(task_id: str) -> str:
    return _task(task_id)


def upload(task_id: str) -> str:
    return f"{_task(task_id)}:upload"


def task_lease(task_id: str) -> str:
    return f"{_task(task_id)}:lease"


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
    """A SCAN pattern matching every key of one collection (Redis' glob treats braces as plain characters)."""
    return f"{_collection(collection)}:*"


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

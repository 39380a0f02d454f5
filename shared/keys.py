"""Every Redis key Lookalike uses. Nothing outside this module formats a key.

Layout (all under the ``lookalike:`` prefix, so Celery's own keys never collide):

  lookalike:collections                  set    names of collections ever written
  lookalike:col:{c}:vectors              hash   image id -> 512 float32, little-endian (2 KiB)
  lookalike:col:{c}:images               hash   image id -> JSON {"metadata", "indexed_at"}
  lookalike:col:{c}:pdq                  hash   image id -> PDQ hash (32 bytes) and its quality (1 byte)
  lookalike:col:{c}:thumbs               hash   image id -> a small JPEG of the image (for the web page)
  lookalike:col:{c}:descriptor           hash   model, dimension and weights of its vectors
  lookalike:col:{c}:settings             string JSON of the collection's settings (match threshold, kind)
  lookalike:col:{c}:whitening            hash   its learned PCA-whitening: mean, projection, when and from what
  lookalike:col:{c}:whitening:claim      string held (with a TTL) while a worker learns the whitening
  lookalike:col:{c}:changes              stream change events (put/del of an id, drop, whiten), for replicas
  lookalike:col:{c}:seq                  string number of the last change event (detects trimmed gaps)
  lookalike:upload:{task_id}             string uploaded image bytes, until the worker has them
  lookalike:task:{task_id}               hash   the task resource served by GET /v1/tasks/{id}
  lookalike:task:{task_id}:done          pubsub channel announcing the task has finished
  lookalike:task:{task_id}:lease         string token of the execution running the task (TTL, renewed while it runs)
  lookalike:batch:{batch_id}             string JSON: a bulk upload's collection and items
  lookalike:idem:{api key}:{sha256}      string JSON: a POST's fingerprint and response, for Idempotency-Key
  lookalike:workers                      zset   worker name -> last heartbeat (unix seconds)
  lookalike:workers:info                 hash   worker name -> JSON of its model and weights
  lookalike:consumers                    zset   every worker process (any role) -> last heartbeat (unix seconds)
  lookalike:consumer:{name}:held         set    delivery tags of the task messages that process holds
  lookalike:reaper                       string held (TTL) by the process restoring messages of dead workers
  lookalike:apikeys                      hash   key id -> JSON of an API key (secret hashed)
"""

PREFIX = "lookalike"

COLLECTIONS = f"{PREFIX}:collections"
WORKERS = f"{PREFIX}:workers"
WORKERS_INFO = f"{PREFIX}:workers:info"
API_KEYS = f"{PREFIX}:apikeys"
CONSUMERS = f"{PREFIX}:consumers"
REAPER = f"{PREFIX}:reaper"


def collection_vectors(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:vectors"


def collection_images(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:images"


def collection_pdq(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:pdq"


def collection_thumbnails(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:thumbs"


def collection_descriptor(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:descriptor"


def collection_settings(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:settings"


def collection_whitening(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:whitening"


def collection_whitening_claim(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:whitening:claim"


def collection_changes(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:changes"


def collection_change_seq(collection: str) -> str:
    return f"{PREFIX}:col:{collection}:seq"


def upload(task_id: str) -> str:
    return f"{PREFIX}:upload:{task_id}"


def task(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def task_done_channel(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:done"


def task_lease(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}:lease"


def consumer_held(name: str) -> str:
    return f"{PREFIX}:consumer:{name}:held"


def batch(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def idempotency(principal: str, key_digest: str) -> str:
    return f"{PREFIX}:idem:{principal}:{key_digest}"


# Matches every key above; for tools and tests that look at the whole store.
ALL_KEYS_PATTERN = f"{PREFIX}:*"

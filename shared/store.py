"""Reading and writing Lookalike's records in Redis: images, vectors, uploads, tasks, workers.

Key names come from :mod:`shared.keys`; this module owns how records are (de)serialised.
Vectors are stored as raw little-endian float32 bytes (512 x 4 = 2 KiB per image).
"""

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import redis

from shared import keys
from shared.errors import LookalikeError
from shared.schemas import FINISHED_STATES, QUEUED, RUNNING

VECTOR_DTYPE = np.dtype("<f4")


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with milliseconds, as the API shows times."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_vector(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


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

    @classmethod
    def from_mapping(cls, mapping: dict[str, str]) -> "Descriptor":
        return cls(model=mapping["model"], dimension=int(mapping["dimension"]), weights=mapping["weights"])


class Store:
    def __init__(self, client: redis.Redis, task_ttl_seconds: int, upload_ttl_seconds: int):
        self.redis = client
        self.task_ttl = task_ttl_seconds
        self.upload_ttl = upload_ttl_seconds

    @classmethod
    def from_settings(cls, settings) -> "Store":
        client = redis.Redis.from_url(settings.redis_url, decode_responses=False, health_check_interval=30)
        return cls(client, settings.task_ttl_seconds, settings.upload_ttl_seconds)

    # --- Tasks and uploads ---------------------------------------------------------------------

    def submit(self, submissions: list[tuple[str, str, dict[str, Any], bytes]]) -> None:
        """Store uploads and their queued task records, all in one transaction.

        Each submission is ``(task_id, kind, record fields, upload bytes)``.
        """
        submitted_at = utc_now()
        pipe = self.redis.pipeline(transaction=True)
        for task_id, kind, fields, upload in submissions:
            record = {"task_id": task_id, "kind": kind, "state": QUEUED, "submitted_at": submitted_at, **fields}
            pipe.set(keys.upload(task_id), upload, ex=self.upload_ttl)
            pipe.hset(keys.task(task_id), mapping=_encode_fields(record))
            pipe.expire(keys.task(task_id), self.task_ttl)
        pipe.execute()

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

    def delete_upload(self, task_id: str) -> None:
        self.redis.delete(keys.upload(task_id))

    def mark_running(self, task_id: str) -> None:
        self._update_task(task_id, {"state": RUNNING, "started_at": utc_now()})

    def finish_task(self, task_id: str, state: str, *, result: Any = None, error: dict | None = None) -> None:
        """Record the outcome, drop the upload, and wake anyone waiting on the task."""
        assert state in FINISHED_STATES
        fields = {"state": state, "finished_at": utc_now(), "result": result, "error": error}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.task(task_id), mapping=_encode_fields(fields))
        pipe.expire(keys.task(task_id), self.task_ttl)
        pipe.delete(keys.upload(task_id))
        pipe.publish(keys.task_done_channel(task_id), state)
        pipe.execute()

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

    def save_image(
        self, collection: str, image_id: str, vector: np.ndarray, metadata: dict, descriptor: Descriptor
    ) -> bool:
        """Write vector and metadata in one transaction; True when an existing image was replaced.

        Refuses (``descriptor_mismatch``) to mix vectors of another model or weights into a
        collection. Writing the same image twice leaves one copy, so retries are harmless.
        """
        if vector.shape != (descriptor.dimension,):
            raise ValueError(f"vector shape {vector.shape} does not match descriptor dimension {descriptor.dimension}")
        record = json.dumps({"metadata": metadata, "indexed_at": utc_now()})
        descriptor_key = keys.collection_descriptor(collection)

        def write(pipe: redis.client.Pipeline) -> bool:
            stored = {k.decode(): v.decode() for k, v in pipe.hgetall(descriptor_key).items()}
            if stored and Descriptor.from_mapping(stored) != descriptor:
                raise LookalikeError(
                    "descriptor_mismatch",
                    "This collection holds vectors from another model or weights; index into a new collection "
                    "or re-index this one with the current worker.",
                    {"collection": stored, "worker": descriptor.to_mapping()},
                )
            existed = pipe.hexists(keys.collection_vectors(collection), image_id)
            pipe.multi()
            if not stored:
                pipe.hset(descriptor_key, mapping=descriptor.to_mapping())
            pipe.sadd(keys.COLLECTIONS, collection)
            pipe.hset(keys.collection_vectors(collection), image_id, encode_vector(vector))
            pipe.hset(keys.collection_images(collection), image_id, record)
            return bool(existed)

        return self.redis.transaction(write, descriptor_key, value_from_callable=True)

    def get_image(self, collection: str, image_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(keys.collection_images(collection), image_id)
        if raw is None:
            return None
        return {"id": image_id, **json.loads(raw)}

    def delete_image(self, collection: str, image_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(keys.collection_vectors(collection), image_id)
        pipe.hdel(keys.collection_images(collection), image_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def load_collection(self, collection: str, dimension: int) -> tuple[list[str], np.ndarray]:
        """All ids and their vectors as one (n, dimension) matrix, rows aligned with ids."""
        stored = self.redis.hgetall(keys.collection_vectors(collection))
        ids = [image_id.decode() for image_id in stored]
        return ids, decode_vectors(list(stored.values()), dimension)

    def get_metadata(self, collection: str, image_ids: list[str]) -> list[dict | None]:
        if not image_ids:
            return []
        raw = self.redis.hmget(keys.collection_images(collection), image_ids)
        return [None if value is None else json.loads(value)["metadata"] for value in raw]

    def collection_info(self, collection: str) -> dict[str, Any] | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.sismember(keys.COLLECTIONS, collection)
        pipe.hlen(keys.collection_vectors(collection))
        pipe.hgetall(keys.collection_descriptor(collection))
        known, count, descriptor = pipe.execute()
        if not known:
            return None
        descriptor = {k.decode(): v.decode() for k, v in descriptor.items()}
        return {
            "collection": collection,
            "images": count,
            "dimension": int(descriptor["dimension"]) if descriptor else None,
            "model": descriptor.get("model"),
            "weights": descriptor.get("weights"),
        }

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

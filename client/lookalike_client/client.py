"""A small typed Python client for Lookalike's HTTP API (the `lookalike` CLI is built on it).

    from lookalike_client import Client
    lookalike = Client("http://127.0.0.1:8000", api_key="lk_...")
    lookalike.index("photos", "cat.jpg", image_id="cats/1.jpg", metadata={"source": "upload"})
    matches = lookalike.query("photos", "other.jpg", k=5)["matches"]
    verdict = lookalike.check("banned", "upload.jpg")["verdict"]   # one round trip when it finishes in time
    lookalike.bank_hashes("banned", [{"id": "list/2291", "hash": "f8f8f0cc...", "quality": 100}])
    verdict = lookalike.check("banned", hash="f8f8f0cc...")["verdict"]

Retries: connection errors, 429 (after its Retry-After), 502, 503 and 504 are retried with
exponential backoff (urllib3's Retry). POSTs are retried too: each carries a fresh
``Idempotency-Key``, so a retry of a request that did arrive returns its first answer
instead of queueing the work twice.

Every caller's value that goes into a URL path (collection, image id, task and batch ids) is
percent-encoded as one segment, so ids with ``/``, ``#``, ``?``, ``%`` or spaces reach the
API as they are. It needs only ``requests``: nothing of the server (api/, shared/, worker/).
"""

import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE, KEY_VARIABLE = "LOOKALIKE_API_URL", "LOOKALIKE_API_KEY"
FINISHED = ("succeeded", "failed")
# The server holds a ?wait= poll at most this long (LOOKALIKE_MAX_WAIT_SECONDS' default).
LONG_POLL_SECONDS = 30
# How long check() and query() ask the server to hold their answer (``Prefer: wait=N``) by default.
DEFAULT_WAIT_SECONDS = 10
# Most hashes the server takes in one request (LOOKALIKE_MAX_VECTORS_PER_REQUEST's default).
MAX_ITEMS_PER_REQUEST = 1000

ImageInput = bytes | str | Path  # image bytes, or the path of an image file


class ApiError(Exception):
    """An error answer of the API: its HTTP status and the stable ``code`` to branch on."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details or {}


class TaskFailed(Exception):
    """A task ended ``failed``; ``error`` is its ``{"code", "message", "details"}``."""

    def __init__(self, task: dict):
        error = task.get("error") or {}
        super().__init__(f"task {task['task_id']} failed: {error.get('code')}: {error.get('message')}")
        self.task, self.code = task, error.get("code")


@dataclass(frozen=True)
class Submitted:
    """What a submission answered: the task to wait for."""

    task_id: str
    status_url: str
    image_id: str | None = None
    replayed: bool = False  # the answer of an earlier request with the same Idempotency-Key


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60,
                 retries: int = 4, backoff_seconds: float = 0.5):
        self.url = (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")
        api_key = api_key or os.environ.get(KEY_VARIABLE)
        self.timeout = timeout
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        retry = Retry(total=retries, backoff_factor=backoff_seconds, status_forcelist=(429, 502, 503, 504),
                      allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    # --- Submitting work ----------------------------------------------------------------------

    def index(self, collection: str, image: ImageInput | None = None, *, image_id: str | None = None,
              metadata: dict | None = None, url: str | None = None, callback_url: str | None = None) -> Submitted:
        """Queue one image (bytes, a file path, or ``url`` for the service to fetch) for indexing."""
        form = _form(id=image_id, metadata=metadata, url=url, callback_url=callback_url)
        return _submitted(self._post(f"/v1/collections/{_segment(collection)}/images", form, _image_files(image)))

    def index_many(self, collection: str, images: Iterable[tuple[str, ImageInput, dict | None]],
                   callback_url: str | None = None) -> dict:
        """Queue many ``(image_id, image, metadata)`` in one bulk request (at most the server's batch size).

        Returns the batch resource: ``batch_id`` and each item's ``task_id`` or ``error``.
        """
        items = list(images)
        files = [("image", (_filename(image, image_id), _read(image))) for image_id, image, _ in items]
        form = _form(ids=[image_id for image_id, _, _ in items],
                     metadata=[metadata or {} for _, _, metadata in items], callback_url=callback_url)
        return self._post(f"/v1/collections/{_segment(collection)}/batches", form, files).json()

    def query(self, collection: str, image: ImageInput | None = None, *, vector: list[float] | None = None,
              url: str | None = None, hash: str | None = None, hash_quality: int | None = None,  # noqa: A002
              k: int = 10, min_score: float | None = None, filter: dict | None = None,  # noqa: A002
              signals: str | None = None, expand: int | None = None, write_token: str | None = None,
              timeout: float | None = None, wait: int = DEFAULT_WAIT_SECONDS) -> dict:
        """Rank the collection against an image, a ``url``, a ``vector`` or a PDQ ``hash``; the finished task's result.

        ``hash``: 64 hex digits (with ``hash_quality`` 0-100), searched by PDQ alone. ``expand``: query
        expansion over that many best matches (see docs/api.md). ``write_token``: see those writes (what
        :meth:`bank_hashes` or an index task gave). ``wait`` and ``timeout``: as for :meth:`check`."""
        form = _form(vector=vector, url=url, hash=hash, hash_quality=hash_quality, k=k, min_score=min_score,
                     filter=filter, signals=signals, expand=expand, write_token=write_token)
        return self._submit_and_wait(f"/v1/collections/{_segment(collection)}/queries", form, image, timeout, wait)

    def check(self, collection: str, image: ImageInput | None = None, *, vector: list[float] | None = None,
              url: str | None = None, hash: str | None = None, hash_quality: int | None = None,  # noqa: A002
              signals: str | None = None, allow_collections: list[str] | None = None,
              filter: dict | None = None, write_token: str | None = None,  # noqa: A002
              timeout: float | None = None, wait: int = DEFAULT_WAIT_SECONDS) -> dict:
        """Is this a near-duplicate of anything in the collection? The check's result (``verdict``, ``best_match``).

        One of ``image``, ``url``, ``vector`` or ``hash`` (a PDQ hash, 64 hex digits, with ``hash_quality``:
        searched by PDQ alone). ``verdict`` is None for a collection whose settings were never set (a plain
        index, no block or allow list): ``near_duplicate`` still says whether anything matched.

        ``wait`` (seconds, 0 = off) asks the server to hold its answer until the check finishes
        (``Prefer: wait=N``): in time, the result comes in that one answer; otherwise (or from a server that
        does not honour the preference) the task is polled, as without it. ``timeout`` bounds the whole call
        (the client's timeout by default): ``TimeoutError`` past it, ``TaskFailed`` for a failed check.
        """
        form = _form(vector=vector, url=url, hash=hash, hash_quality=hash_quality, signals=signals,
                     allow_collections=allow_collections, filter=filter, write_token=write_token)
        return self._submit_and_wait(f"/v1/collections/{_segment(collection)}/checks", form, image, timeout, wait)

    def bank_hashes(self, collection: str, items: Iterable[dict], *, batch_size: int = MAX_ITEMS_PER_REQUEST) -> dict:
        """Bank PDQ hashes without their images (a shared hash list): ``{"id", "hash", "quality"?, "metadata"?}``
        dicts, ``hash`` 64 hex digits, ``quality`` 0-100 (the server's default 100 when left out).

        Sent in requests of at most ``batch_size`` items, in order, each stored as a whole or refused as a
        whole by the server; ids repeated in different requests replace each other. Returns the totals
        ``{"collection", "stored", "replaced", "write_token"}``, ``write_token`` covering every request's
        writes (pass it to :meth:`check` or :meth:`query` to see them at once); no items: nothing sent.

        A refused item raises ``ApiError`` (``invalid_hash``, ``invalid_hash_quality``, a bad or repeated id,
        bad metadata) with ``details["item"]`` its 0-based position in ``items`` (across batches) and
        ``details["banked"]`` the totals of the requests stored before it: those are kept.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        path = f"/v1/collections/{_segment(collection)}/hashes"
        totals: dict[str, Any] = {"collection": collection, "stored": 0, "replaced": 0, "write_token": None}
        written: dict[int, int] = {}
        offset = 0
        for batch in _batches(items, batch_size):
            try:
                answer = self._post_json(path, {"items": batch})
            except ApiError as error:
                if isinstance(error.details.get("item"), int) and not isinstance(error.details["item"], bool):
                    error.details["item"] += offset
                error.details["banked"] = dict(totals)
                raise
            totals["collection"] = answer.get("collection", collection)
            totals["stored"] += answer["stored"]
            totals["replaced"] += answer["replaced"]
            _merge_write_token(written, answer.get("write_token"))
            totals["write_token"] = ",".join(f"{bucket}:{seq}" for bucket, seq in sorted(written.items())) or None
            offset += len(batch)
        return totals

    # --- Results -----------------------------------------------------------------------------

    def task(self, task_id: str, wait: int = 0) -> dict:
        return self._get(f"/v1/tasks/{_segment(task_id)}", wait=wait or None)

    def wait(self, task_id: str, timeout: float | None = None) -> dict:
        """The task once it has finished (long-polling the server), or ``TimeoutError``.

        A server holding as many waiting polls as it allows answers at once, with ``Retry-After``:
        then this pauses that long before asking again, rather than asking in a tight loop.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0, min(LONG_POLL_SECONDS, int(remaining)))
            response = self._get_response(f"/v1/tasks/{_segment(task_id)}", wait=wait or None)
            task = self._json(response)
            if task["state"] in FINISHED:
                return task
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} still {task['state']} after the timeout")
            retry_after = response.headers.get("Retry-After", "")
            if wait and retry_after.isdigit():
                time.sleep(min(int(retry_after), max(0.0, deadline - time.monotonic())))

    def result(self, task_id: str, timeout: float | None = None) -> dict:
        """The result of a task that succeeded; ``TaskFailed`` if it failed."""
        return _task_result(self.wait(task_id, timeout))

    def batch(self, batch_id: str) -> dict:
        return self._get(f"/v1/batches/{_segment(batch_id)}")

    # --- Collections and images ------------------------------------------------------------

    def collections(self) -> list[str]:
        return self._get("/v1/collections")["collections"]

    def collection(self, collection: str) -> dict:
        return self._get(f"/v1/collections/{_segment(collection)}")

    def set_collection(self, collection: str, **settings: Any) -> dict:
        return self._json(self.http.put(self.url + f"/v1/collections/{_segment(collection)}", json=settings,
                                        timeout=self.timeout))

    def drop_collection(self, collection: str) -> dict:
        """Delete the whole collection (an admin key's right): how it changes descriptor."""
        return self._json(self.http.delete(self.url + f"/v1/collections/{_segment(collection)}", timeout=self.timeout))

    def image_ids(self, collection: str, page_size: int = 1000) -> set[str]:
        """Every image id in the collection (empty for a collection that does not exist)."""
        ids, cursor = set(), 0
        while True:
            try:
                page = self._get(f"/v1/collections/{_segment(collection)}/images", cursor=cursor, limit=page_size)
            except ApiError as error:
                if error.code == "collection_not_found":
                    return set()
                raise
            ids.update(page["ids"])
            if page["next_cursor"] is None:
                return ids
            cursor = page["next_cursor"]

    def image(self, collection: str, image_id: str) -> dict:
        return self._get(f"/v1/collections/{_segment(collection)}/images/{_segment(image_id)}")

    def delete_image(self, collection: str, image_id: str) -> dict:
        """Delete one image: the API's answer (``{"id", "deleted": true, ...}``); ``ApiError`` 404 if absent."""
        path = f"/v1/collections/{_segment(collection)}/images/{_segment(image_id)}"
        return self._json(self.http.delete(self.url + path, timeout=self.timeout))

    # --- Plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> dict:
        return self._json(self._get_response(path, **params))

    def _get_response(self, path: str, **params: Any) -> requests.Response:
        params = {name: value for name, value in params.items() if value is not None}
        read_timeout = self.timeout + int(params.get("wait") or 0)
        return self.http.get(self.url + path, params=params, timeout=read_timeout)

    def _post(self, path: str, form: dict[str, str], files: list | None, wait: int = 0) -> requests.Response:
        headers = {"Idempotency-Key": uuid.uuid4().hex}  # makes the automatic retries safe
        if wait:
            headers["Prefer"] = f"wait={wait}"  # RFC 7240: hold the answer until the task finishes, or wait s
        response = self.http.post(self.url + path, data=form, files=files or None, headers=headers,
                                  timeout=self.timeout + wait)
        self._json(response)  # raises ApiError on an error answer
        return response

    def _post_json(self, path: str, body: dict) -> dict:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return self._json(self.http.post(self.url + path, json=body, headers=headers, timeout=self.timeout))

    def _submit_and_wait(self, path: str, form: dict[str, str], image: ImageInput | None, timeout: float | None,
                         wait: int) -> dict:
        """Submit a query or check and return its result: from the answer itself when the server held it until
        the task finished (``200`` with the task, ``Prefer: wait``), else by polling the task (``202``)."""
        started = time.monotonic()
        timeout = self.timeout if timeout is None else timeout
        wait = max(0, min(int(wait), int(timeout)))  # never held longer than the caller will wait
        response = self._post(path, form, _image_files(image), wait)
        body = response.json()
        if response.status_code == 200 and body.get("state") in FINISHED:  # the finished task
            return _task_result(body)
        remaining = max(0.0, timeout - (time.monotonic() - started))
        return self.result(body["task_id"], remaining)

    @staticmethod
    def _json(response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = (body or {}).get("error") if isinstance(body, dict) else None
            if not error:
                raise ApiError(response.status_code, "http_error", response.text[:200])
            raise ApiError(response.status_code, error["code"], error["message"], error.get("details"))
        if body is None:  # not this API (a proxy's or another server's page): no code of the API's to give
            raise ApiError(response.status_code, "not_json", f"the answer is not JSON: {response.text[:200]!r}")
        return body


def _segment(value: str) -> str:
    """A caller's value as one URL path segment: every reserved character percent-encoded (``/`` too)."""
    return quote(str(value), safe="")


def _task_result(task: dict) -> dict:
    """A finished task's result; ``TaskFailed`` if it failed."""
    if task["state"] == "failed":
        raise TaskFailed(task)
    return task["result"]


def _batches(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _merge_write_token(written: dict[int, int], token: str | None) -> None:
    """Fold a write token (``<bucket>:<change>`` pairs, comma-separated) into ``written``: per bucket the latest
    change. Each request's token names the buckets it wrote; together they cover every request's writes."""
    for pair in filter(None, (token or "").split(",")):
        bucket, _, seq = pair.partition(":")
        written[int(bucket)] = max(written.get(int(bucket), 0), int(seq))


def _submitted(response: requests.Response) -> Submitted:
    body = response.json()
    return Submitted(body["task_id"], body["status_url"], body.get("image_id"),
                     response.headers.get("Idempotent-Replayed") == "true")


def _form(**fields: Any) -> dict[str, str]:
    """Form fields as the API takes them: strings as they are, everything else as JSON; None left out."""
    return {name: value if isinstance(value, str) else json.dumps(value)
            for name, value in fields.items() if value is not None}


def _image_files(image: ImageInput | None) -> list | None:
    return None if image is None else [("image", (_filename(image, "image"), _read(image)))]


def _read(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _filename(image: ImageInput, fallback: str) -> str:
    return Path(image).name if isinstance(image, (str, Path)) else Path(fallback).name or "image"

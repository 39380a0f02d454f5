"""The index, query and check tasks, each keeping its own outcome in its task record (shared.store),
and the learning of a collection's whitening, which workers start themselves."""

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import redis
from celery.exceptions import Reject

from shared import keys, logs
from shared.collection_settings import DEFAULT_COLLECTION_SETTINGS
from shared.errors import LookalikeError
from shared.images import decode_image, inspect_image, make_thumbnail
from shared.matching import CNN, PDQ, matches_filter, verdict
from shared.outbound import Allowlist
from shared.queue import CHECK_TASK, INDEX_TASK, QUERY_TASK, SEARCH_TASK, WHITEN_TASK, search_queue
from shared.search_groups import bucket_groups
from shared.settings import get_settings
from shared.store import REDIS_UNAVAILABLE, VECTOR_DTYPE, Descriptor, StoredWhitening, encode_vector, utc_now
from shared.task_records import CALLBACK_PENDING, FAILED, SUCCEEDED
from shared.write_tokens import write_token
from worker.batcher import QUERY_PRIORITY
from worker import metrics
from worker.celery_app import app
from worker.descriptors import Whitening
from worker.outbound import fetch_image
from worker.pdq import PdqHash
from worker.ranking import ranked
from worker.delivery import LEASES
from worker.runtime import (
    RANDOM_WEIGHTS_WARNING,
    WORKER_NAME,
    get_decode_budget,
    get_extractor,
    get_hash_processes,
    get_replicas,
    get_store,
    liveness_seconds,
    serves_group,
)
from worker.webhooks import schedule_webhook

log = logging.getLogger(__name__)

# Candidates read in the first round of a filtered query (at least 4k).
FILTER_FIRST_DEPTH = 100
# Longest a worker may take to learn a whitening before another may try (the claim's lifetime).
WHITENING_CLAIM_SECONDS = 600
# How often a task waiting for Redis, or for another execution of itself, looks again.
CLAIM_RETRY_SECONDS = 0.5


@app.task(name=INDEX_TASK)
def index_image(task_id: str, collection: str, image_id: str, metadata: dict, url: str | None = None) -> None:
    def index() -> dict:
        extractor = get_extractor()
        pixels = decode_image(_image_bytes(task_id, url), get_decode_budget())
        hashed = get_hash_processes().start(pixels)  # (in processes of its own: while the image waits for its batch)
        vector = extractor.extract([pixels])[0]
        pdq = hashed()
        settings = get_settings()
        thumbnail = make_thumbnail(pixels, settings.thumbnail_size) if settings.thumbnail_size else None
        store = get_store()
        # The store may have filled since the API accepted the image: refuse it while the headroom
        # above the ratio still lets this task's outcome, and queries, be written. Then, right before the
        # write, whether this execution still runs the task (both in one round trip).
        execution = _running_under.get()
        if not store.check_room_for_images(settings.store_full_ratio, collection,
                                           lease=None if execution is None else (task_id, execution)):
            raise LeaseLost(task_id)
        written: dict[int, int] = {}
        info: dict = {}  # the collection as the write left it (read with the write)
        replaced = store.save_image(collection, image_id, vector, metadata, extractor.descriptor, pdq.encode(),
                                    thumbnail, task_id=task_id, written=written, info=info)
        _learn_whitening_when_due(collection, info or None)
        return {"collection": collection, "image_id": image_id, "replaced": replaced,
                "pdq_quality": pdq.quality, "write_token": write_token(written)} | _model_labels()

    _run(task_id, index, upload=url is None)


@app.task(name=QUERY_TASK)
def query_image(task_id: str, collection: str, k: int, min_score: float | None = None,
                filter: dict | None = None, by_vector: bool = False,  # noqa: A002 - the API's name
                signals: tuple[str, ...] = (CNN,), url: str | None = None, expand: int = 0,
                fresh: dict[str, int] | None = None, partial: bool = False, by_hash: bool = False) -> None:
    def embed() -> dict | object:
        info, _ = _collection(collection)
        _learn_whitening_when_due(collection, info)
        probe = _probe(task_id, url, info, by_vector, signals, expand, by_hash)
        request = {"kind": "query", "collection": collection, "k": k, "min_score": min_score, "filter": filter or {},
                   "fresh": fresh or {}, "partial": partial}
        return _rank_or_pass_on(task_id, request, probe, _model_labels())

    _run(task_id, embed, upload=url is None)


@app.task(name=CHECK_TASK)
def check_image(task_id: str, collection: str, k: int = 1, min_score: float | None = None,
                filter: dict | None = None, by_vector: bool = False,  # noqa: A002 - the API's name
                signals: tuple[str, ...] = (CNN, PDQ), allow_collections: list[str] | None = None,
                url: str | None = None, fresh: dict[str, int] | None = None, partial: bool = False,
                by_hash: bool = False) -> None:
    def embed() -> dict | object:
        info, _ = _collection(collection)
        _learn_whitening_when_due(collection, info)
        probe = _probe(task_id, url, info, by_vector, signals, by_hash=by_hash)
        request = {"kind": "check", "collection": collection, "filter": filter or {},
                   "allow_collections": allow_collections or [], "fresh": fresh or {}, "partial": partial}
        return _rank_or_pass_on(task_id, request, probe, _model_labels())

    _run(task_id, embed, upload=url is None)


@app.task(name=SEARCH_TASK)
def search_task(task_id: str, request: dict, probe: dict, labels: dict, state: dict | None = None) -> None:
    """The ranking half of a query or check, in the search group holding the collection it needs next -- or,
    for a collection whose buckets several groups hold, this group's answer from its buckets (``state``
    ``{"answer": {"group", "buckets", "groups"}}``), the last of which ranks the merged answers."""
    if state is not None and "answer" in state:
        _answer_for_group(task_id, request, Probe.from_message(probe), labels, **state["answer"])
    else:
        _run(task_id, lambda: _rank_or_pass_on(task_id, request, Probe.from_message(probe), labels, state))
        if state is not None and "answers" in state:  # a partial answer, ranked after the give-up
            get_store().gather_done(task_id)


def _answer_for_group(task_id: str, request: dict, probe: "Probe", labels: dict, group: str, buckets: list[int],
                      groups: int, allow: dict | None = None) -> None:
    """Record this group's candidates (or its failure) for a scattered query or check; with every group's in,
    rank the merged answers and finish the task (under its lease, as any stage does).

    The answer is computed without the task's lease -- the groups answer at once, and an answer
    computed twice (a redelivered message) is the same answer -- and recorded next to the task
    record; a Redis outage gives the message back to be answered again. ``allow``: the answer is for a
    check's allow collection (``{"collection", "state"}``: the check's state so far, carried on)."""
    logs.task_id.set(task_id)
    collection = request["collection"] if allow is None else allow["collection"]
    started = time.perf_counter()
    try:
        info, settings = _collection(collection, count_images=False)
        if info is None:
            answer = {"cnn": [], "pdq": [], "whitened": None}
        elif allow is not None:  # the best candidates of an allow collection, by its own settings
            parts = [keys.part(collection, bucket, settings["buckets"]) for bucket in buckets]
            answer = _candidates(collection, probe, settings, 1, None, {}, parts)
        else:
            parts = [keys.part(collection, bucket, settings["buckets"]) for bucket in buckets]
            k = request["k"] if request["kind"] == "query" else 1
            answer = _candidates(collection, probe, settings, k, request.get("min_score"), request["filter"], parts,
                                 _fresh_parts(collection, settings, request))
    except LookalikeError as exc:
        answer = {"error": exc.to_dict()}
    except REDIS_UNAVAILABLE as exc:
        raise Reject(f"Redis unavailable ({exc}): answered again when it is back", requeue=True) from exc
    except Exception:
        log.exception("task %s: group %s failed to answer", task_id, group)
        answer = {"error": LookalikeError("internal_error", "A search worker failed unexpectedly; see its log.",
                                          {"task_id": task_id, "group": group}).to_dict()}
    answer["buckets"] = buckets
    metrics.GROUP_ANSWER_SECONDS.labels(group).observe(time.perf_counter() - started)
    metrics.GROUP_ANSWERS.labels(group, "failed" if "error" in answer else "answered").inc()
    answers = get_store().gather_answer(task_id, group, answer, groups, allow=allow is not None)
    if answers is not None:
        state = {"answers": answers} if allow is None else {**allow["state"], "allow_answers": answers}
        _run(task_id, lambda: _rank_or_pass_on(task_id, request, probe, labels, state))
        get_store().gather_done(task_id, allow=allow is not None)


# Late gathers given up on per heartbeat, at most (the rest at the next one).
GIVE_UP_PER_BEAT = 100
# What a task's work returns when the task's next stage, in another process, finishes it.
HANDED_OFF = object()


@dataclass
class Scatter:
    """Ranking needs a collection whose buckets several search groups hold: each group's buckets. ``allow``: the
    collection is a check's allow collection (``{"collection", "state"}``)."""

    placement: dict[str, list[int]]
    allow: dict | None = None


@dataclass
class PassOn:
    """Ranking needs a collection this process does not hold: the group that does, and what was found so far."""

    group: str
    state: dict | None


def _rank_or_pass_on(task_id: str, request: dict, probe: "Probe", labels: dict,
                     state: dict | None = None) -> dict | object:
    """Rank here as far as this process holds the collections needed; pass the rest on to the search group
    holding the next one (a ``lookalike.search`` task on its queue), which finishes the task."""
    ranked = _rank(request, probe, labels, state)
    if isinstance(ranked, (Scatter, PassOn)):
        if isinstance(ranked, Scatter) and probe.expand:  # it averages with the best of all buckets: two rounds
            raise LookalikeError("expand_unavailable", "Query expansion is not available for a collection whose "
                                 "buckets several search groups hold.", {"collection": request["collection"]})
        # The lease is given up before the next stage is sent, which claims it: given up after, the next stage
        # could find it still held and wait a claim retry (half a second) for nothing. (A crash between the two
        # leaves this stage's message unacknowledged: it runs again and sends the next stage.)
        _check_still_running_it(task_id)
        if _running_under.get() is not None:
            get_store().release_lease(task_id, _running_under.get())
    if isinstance(ranked, Scatter):
        stage = ({"request": request, "probe": probe.to_message(), "labels": labels}
                 if request.get("partial") and ranked.allow is None else None)
        get_store().expect_answers(task_id, ranked.placement, get_settings().gather_timeout_seconds, stage,
                                   allow=ranked.allow is not None)
        for group, buckets in ranked.placement.items():
            answer = {"group": group, "buckets": buckets, "groups": len(ranked.placement), "allow": ranked.allow}
            search_task.apply_async(kwargs={"task_id": task_id, "request": request, "probe": probe.to_message(),
                                            "labels": labels, "state": {"answer": answer}},
                                    task_id=f"{task_id}-{group}-{uuid.uuid4().hex[:8]}", queue=search_queue(group))
        return HANDED_OFF
    if isinstance(ranked, PassOn):
        search_task.apply_async(kwargs={"task_id": task_id, "request": request, "probe": probe.to_message(),
                                        "labels": labels, "state": ranked.state},
                                task_id=f"{task_id}-search-{uuid.uuid4().hex[:8]}", queue=search_queue(ranked.group))
        return HANDED_OFF
    return ranked


def give_up_late_gathers() -> None:
    """Fail the scattered queries and checks whose search groups did not all answer in time (called by the one
    process restoring dead workers' messages, each heartbeat): ``search_unavailable``, naming what is
    missing -- never an answer from some of the buckets."""
    store = get_store()
    for task_id, allow in store.gathers_due(limit=GIVE_UP_PER_BEAT):
        record = store.get_task(task_id)
        placement = (record or {}).get("scatter") or {}
        answered = store.missing_answers(task_id, len(placement), allow)
        if answered is None:
            continue
        missing = {group: buckets for group, buckets in placement.items() if group not in answered}
        stage = (record or {}).get("scatter_stage")
        if stage is not None and answered:  # the caller takes what came: ranked by a group that answered
            search_task.apply_async(kwargs={**stage, "task_id": task_id,
                                            "state": {"answers": store.answers(task_id), "missing": missing}},
                                    task_id=f"{task_id}-partial", queue=search_queue(answered[0]))
            _count_missing(missing)
            log.warning("task %s: search groups %s did not answer in time; answered from the others", task_id,
                        sorted(missing))
            continue
        error = LookalikeError("search_unavailable", "Some of the collection's search groups did not answer in "
                               "time; retry shortly.", {"groups_missing": sorted(missing),
                                                        "buckets_missing": sorted(bucket for buckets in missing.values()
                                                                                  for bucket in buckets),
                                                        "waited_seconds": get_settings().gather_timeout_seconds})
        # Unless the last answer came meanwhile and its merge runs or ran (it holds the lease, or finished).
        if store.finish_task(task_id, FAILED, error=error.to_dict(), unless_running=True):
            log.warning("task %s: search groups %s did not answer in time; it failed", task_id, sorted(missing))
            _count_missing(missing)
            metrics.TASKS.labels(record["kind"], FAILED, error.code).inc()
            if record.get("callback"):
                schedule_webhook(task_id)


def _count_missing(missing: dict[str, list[int]]) -> None:
    for group in missing:
        metrics.GROUPS_MISSING.labels(group).inc()


def _placement(collection: str, settings: dict) -> dict[str, list[int]]:
    """Which search group holds which of the collection's buckets now (moves included)."""
    moved = get_store().placement_overrides(collection) if settings["buckets"] > 1 else None
    return bucket_groups(collection, settings, settings["buckets"], get_settings().search_groups, moved)


def _local_candidates(collection: str, info: dict | None, probe: "Probe", settings: dict, request: dict) -> dict:
    """The candidates of a query or check from this process's replicas of the whole collection."""
    if info is None:  # never written, or dropped: no replica kept
        get_replicas().forget(collection)
        return {"cnn": [], "pdq": [], "whitened": None}
    k = request["k"] if request["kind"] == "query" else 1
    return _candidates(collection, probe, settings, k, request.get("min_score"), request["filter"],
                       fresh=_fresh_parts(collection, settings, request))


def _fresh_parts(collection: str, settings: dict, request: dict) -> dict[str, int]:
    """A write token's changes by part (a bucket the collection does not have -- dropped and made again -- is
    passed over)."""
    buckets = settings["buckets"]
    return {keys.part(collection, int(bucket), buckets): seq for bucket, seq in request.get("fresh", {}).items()
            if int(bucket) < buckets}


def _merged(answers: dict[str, dict], partial: bool = False, missing: dict[str, list[int]] | None = None) -> dict:
    """Every group's answer to a scattered search as one; a group's failure is the task's (never an answer
    from some of the buckets), as is a whitening that differs between groups (one is taking a new one).
    With ``partial`` (the caller's choice), groups that failed -- or, in ``missing``, did not answer in
    time -- are left out, and the answer names their buckets; with none answering, the task fails."""
    missing = dict(missing or {})
    failed = next((answer["error"] for answer in answers.values() if "error" in answer), None)
    if failed is not None and partial:
        missing |= {group: answer["buckets"] for group, answer in answers.items() if "error" in answer}
        answers = {group: answer for group, answer in answers.items() if "error" not in answer}
        failed = None if answers else failed
    if failed is not None:
        raise LookalikeError(failed["code"], failed["message"], failed.get("details"))
    if len({json.dumps(answer["whitened"], sort_keys=True) for answer in answers.values()}) > 1:
        raise LookalikeError("collection_loading", "The collection's search groups are taking its new whitening; "
                             "retry shortly.", {"groups": sorted(answers)})
    return {"cnn": [match for answer in answers.values() for match in answer["cnn"]],
            "pdq": [match for answer in answers.values() for match in answer["pdq"]],
            "whitened": next(iter(answers.values()))["whitened"],
            "partial": {"groups_missing": sorted(missing),
                        "buckets_missing": sorted(bucket for buckets in missing.values() for bucket in buckets)}
            if missing else None}


def _rank(request: dict, probe: "Probe", labels: dict, state: dict | None) -> dict | PassOn:
    """A query's or check's result, or where to go on when the next collection it needs is held elsewhere.

    A check ranks its collection, then -- when the verdict would be ``block`` -- its allow
    collections one by one until one holds a near-duplicate; ``state`` carries what was
    found so far from one group to the next.
    """
    collection = request["collection"]
    if state is None or "answers" in state:  # (the collection's own answers; an allow collection's are apart)
        info, settings = _collection(collection, count_images=False)
        if state is None:
            placement = _placement(collection, settings)
            if not all(serves_group(group) for group in placement):
                return PassOn(*placement, None) if len(placement) == 1 else Scatter(placement)
            found = _local_candidates(collection, info, probe, settings, request)
        else:
            found = _merged(state["answers"], request.get("partial", False), state.get("missing", {}))
        k = request["k"] if request["kind"] == "query" else 1
        matches = ranked(found, probe.signals, settings, k, request.get("min_score"))
        whitened = found["whitened"]
        partial = {"partial": found["partial"]} if found.get("partial") else {}
        if request["kind"] == "query":
            near_duplicate = bool(matches) and matches[0]["near_duplicate"]
            return {"matches": matches, "verdict": _verdict(info, settings, near_duplicate), **settings,
                    "whitened": whitened, "expand": probe.expand, **probe.report(), **partial} | labels
        best = next(iter(matches), None)
        near_duplicate = best is not None and best["near_duplicate"]
        outcome = _verdict(info, settings, near_duplicate)
        state = {"best_match": best, "near_duplicate": near_duplicate, "verdict": outcome, "settings": settings,
                 "whitened": whitened, "allow_left": request["allow_collections"] if outcome == "block" else [],
                 "allow_match": None, **partial}
    if "allow_answers" in state:  # the groups holding the allow collection's buckets have answered
        allow_collection = state["allow_left"][0]
        info, settings = _collection(allow_collection, count_images=False)
        state = dict(state)
        found = _merged(state.pop("allow_answers"))
        state["allow_left"] = state["allow_left"][1:]
        state["allow_match"] = _allow_match(allow_collection, info, settings, probe, labels, found)
    while state["allow_left"] and state["allow_match"] is None:
        # A known-good image overrides the block list: moderation's false-positive control.
        allow_collection = state["allow_left"][0]
        info, settings = _collection(allow_collection, count_images=False)
        placement = _placement(allow_collection, settings)
        if not all(serves_group(group) for group in placement):
            if len(placement) == 1:
                return PassOn(*placement, state)
            return Scatter(placement, allow={"collection": allow_collection, "state": state})
        state["allow_left"] = state["allow_left"][1:]
        state["allow_match"] = _allow_match(allow_collection, info, settings, probe, labels)
    return {"verdict": "allow" if state["allow_match"] else state["verdict"], "near_duplicate": state["near_duplicate"],
            "best_match": state["best_match"], "allow_match": state["allow_match"], **state["settings"],
            "whitened": state["whitened"], **probe.report(),
            **({"partial": state["partial"]} if state.get("partial") else {})} | labels


@app.task(name=WHITEN_TASK)
def learn_whitening(collection: str) -> None:
    """Learn the collection's PCA-whitening from a random sample of its vectors and store it.

    Started by :func:`_learn_whitening_when_due`, which holds the collection's claim; stored
    only if the collection still holds the same descriptor and still wants whitening.
    """
    store, settings = get_store(), get_settings()
    started = time.perf_counter()
    outcome, keep_claim = "skipped", False
    try:
        info = store.collection_info(collection)
        if info is not None and info["settings"]["whitening"] and info["images"] >= settings.whitening_min_images:
            sample = store.sample_vectors(collection, settings.whitening_sample_images, info["dimension"] or 0)
            if len(sample) < settings.whitening_min_images:
                # Entries count hashes banked alone, which have no vector: too few vectors to learn from. The
                # claim is kept until it expires, so that every index and query does not ask again meanwhile.
                log.info("whitening of %s not learned: %d of its %d entries have vectors (%d needed)", collection,
                         len(sample), info["images"], settings.whitening_min_images)
                keep_claim = True
                return
            whitening = Whitening.learn(sample)
            stored = StoredWhitening(whitening.mean, whitening.projection, learned_from=len(sample),
                                     collection_size=info["images"], learned_at=utc_now())
            outcome = SUCCEEDED if store.save_whitening(collection, stored, info["model"]) else "skipped"
            log.info("whitening of %s learned from %d vectors (%d dimensions kept) in %.1f ms: %s", collection,
                     len(sample), whitening.dimension, 1000 * (time.perf_counter() - started), outcome)
    except Exception:
        outcome = FAILED
        log.exception("learning the whitening of %s failed; the next index or query tries again", collection)
    finally:
        if not keep_claim:
            store.release_whitening_claim(collection)
        metrics.TASK_SECONDS.labels("whiten").observe(time.perf_counter() - started)
        metrics.TASKS.labels("whiten", outcome, "").inc()


def _learn_whitening_when_due(collection: str, info: dict | None) -> None:
    """Start learning the collection's whitening if it wants one and has none, or has outgrown it."""
    if info is None or not info["settings"]["whitening"]:
        return
    settings = get_settings()
    learned = info["whitening"]
    due = info["images"] >= settings.whitening_min_images and (
        learned is None or info["images"] >= settings.whitening_relearn_growth * learned["collection_size"])
    if due and get_store().claim_whitening(collection, WHITENING_CLAIM_SECONDS):
        learn_whitening.delay(collection)


@dataclass
class Probe:
    """What a query or check compares with: its CNN vector and its PDQ hash, each where used."""

    vector: np.ndarray | None
    pdq: PdqHash | None
    requested: tuple[str, ...]
    expand: int = 0  # average query expansion over this many best CNN matches

    @property
    def signals(self) -> tuple[str, ...]:
        """The signals actually in use: a PDQ hash of too low quality is not."""
        usable_pdq = self.pdq is not None and self.pdq.quality >= get_settings().pdq_min_quality
        return tuple(signal for signal in self.requested
                     if (signal == CNN and self.vector is not None) or (signal == PDQ and usable_pdq))

    def report(self) -> dict:
        """What a result says about its own inputs."""
        return {"signals": list(self.signals), "pdq_hash": None if self.pdq is None else self.pdq.hex,
                "pdq_quality": None if self.pdq is None else self.pdq.quality}

    def to_message(self) -> dict:
        """The probe as a task message carries it (JSON) to a search group."""
        return {"vector": None if self.vector is None else base64.b64encode(encode_vector(self.vector)).decode(),
                "pdq": None if self.pdq is None else self.pdq.encode().hex(), "requested": list(self.requested),
                "expand": self.expand}

    @classmethod
    def from_message(cls, message: dict) -> "Probe":
        vector = None if message["vector"] is None else np.frombuffer(base64.b64decode(message["vector"]),
                                                                      dtype=VECTOR_DTYPE)
        pdq = None if message["pdq"] is None else PdqHash.decode(bytes.fromhex(message["pdq"]))
        return cls(vector, pdq, tuple(message["requested"]), message["expand"])


def _probe(task_id: str, url: str | None, info: dict | None, by_vector: bool, signals: tuple[str, ...],
           expand: int = 0, by_hash: bool = False) -> Probe:
    """The query's unit vector (as sent, or extracted) and PDQ hash, computing only what the signals need."""
    if by_vector:  # the API refuses pdq-only queries by vector; "both" falls back to the CNN
        return Probe(np.frombuffer(_load_upload_bytes(task_id), dtype=VECTOR_DTYPE), None, signals, expand)
    if by_hash:  # a hash a caller sent (its stored form): PDQ alone, the API refuses the CNN for it
        return Probe(None, PdqHash.decode(_load_upload_bytes(task_id)), signals, expand)
    pixels = decode_image(_image_bytes(task_id, url), get_decode_budget())
    hashed = get_hash_processes().start(pixels) if PDQ in signals else None
    vector = None
    if CNN in signals:
        extractor = get_extractor()
        vector = extractor.extract([pixels], priority=QUERY_PRIORITY)[0]
        _check_descriptor(info, extractor.descriptor)  # image vectors only compare with their own kind
    return Probe(vector, hashed() if hashed is not None else None, signals, expand)


def _ranked_matches(collection: str, info: dict | None, probe: Probe, settings: dict, k: int,
                    min_score: float | None, wanted: dict) -> tuple[list[dict], dict | None]:
    """The best ``k`` matches by the probe's signals, each marked near-duplicate or not, and the
    whitening the CNN scores were taken in (None: none). A collection that does not exist (``info``
    None: never written, or dropped) has none, and this worker keeps no replica of it."""
    if info is None:
        get_replicas().forget(collection)
        return [], None
    found = _candidates(collection, probe, settings, k, min_score, wanted)
    return ranked(found, probe.signals, settings, k, min_score), found["whitened"]


def _candidates(collection: str, probe: Probe, settings: dict, k: int, min_score: float | None, wanted: dict,
                parts: list[str] | None = None, fresh: dict[str, int] | None = None) -> dict:
    """What this process's replicas (of ``parts`` of the collection, or all of it) offer a query or check:
    ``cnn``, the best ``k`` by CNN score, and ``pdq``, the ``k`` nearest PDQ hashes within the collection's
    distance -- each passing the filter, each scored by every signal in use (a PDQ candidate's CNN score
    None: deleted since) -- and the ``whitened`` space the scores were taken in. :func:`worker.ranking.ranked` ranks
    them, alone or merged with other search groups' (a scattered search): both lists ordered with ties
    by id, so the merged top k is the top k of the whole collection. ``fresh``: the changes of each part
    the answer must include (a write token)."""
    signals = probe.signals
    cnn: list[dict] = []
    pdq: list[dict] = []
    whitened = None
    # The first lookup brings the replicas up to date; the others see the same state (one round trip).
    if CNN in signals:
        found, whitened = _cnn_candidates(collection, probe, k, min_score, wanted, parts, fresh)
        cnn = [{"id": image_id, "score": score, "pdq_distance": None, "metadata": metadata}
               for image_id, score, metadata in found]
    if PDQ in signals:
        pdq = [{"id": image_id, "score": None, "pdq_distance": distance, "metadata": metadata}
               for image_id, distance, metadata in _pdq_candidates(collection, probe.pdq.bits, settings, k, wanted,
                                                                   refresh=CNN not in signals, parts=parts,
                                                                   fresh=fresh)]
        by_id = {match["id"]: match for match in cnn}
        for match in pdq:
            if match["id"] in by_id:  # found by both
                by_id[match["id"]]["pdq_distance"] = match["pdq_distance"]
                match["score"] = by_id[match["id"]]["score"]
        _fill_pdq_distances(collection, probe.pdq.bits, [match for match in cnn if match["id"] not in
                                                         {found["id"] for found in pdq}], parts)
        if CNN in signals:
            _fill_cnn_scores(collection, probe, [match for match in pdq if match["id"] not in by_id], parts)
    return {"cnn": cnn, "pdq": pdq, "whitened": whitened}


def _cnn_candidates(collection: str, probe: Probe, k: int, min_score: float | None, wanted: dict,
                    parts: list[str] | None = None,
                    fresh: dict[str, int] | None = None) -> tuple[list[tuple[str, float, dict]], dict | None]:
    """The best ``k`` ``(id, score, metadata)`` by cosine whose metadata passes the filter, and the
    whitening the search used.

    Without a filter, the search's top k. With one, candidates are read in score order,
    in ever deeper rounds, until k pass or the collection (or ``min_score``) is exhausted:
    when k matching images exist, k are returned.
    """
    store = get_store()
    depth = k if not wanted else max(4 * k, FILTER_FIRST_DEPTH)
    refresh = True
    while True:
        found = get_replicas().search(collection, probe.vector, depth, min_score, refresh=refresh,
                                      expand=probe.expand, parts=parts, fresh=fresh)
        refresh = False  # deeper rounds of the same query read the same state
        metadata = store.get_metadata(collection, [image_id for image_id, _ in found.matches])
        matches = [
            (image_id, score, meta)  # unrounded until the answer: groups' candidates merge by their exact scores
            for (image_id, score), meta in zip(found.matches, metadata)
            if meta is not None and matches_filter(meta, wanted)  # None: deleted after the search
        ]
        exhausted = len(found.matches) < depth or depth >= found.searched
        if len(matches) >= k or exhausted:
            return matches[:k], found.whitening
        depth *= 4


def _pdq_candidates(collection: str, bits: bytes, settings: dict, k: int, wanted: dict, refresh: bool = True,
                    parts: list[str] | None = None, fresh: dict[str, int] | None = None) -> list[tuple[str, int, dict]]:
    """Up to ``k`` ``(id, distance, metadata)`` within the collection's PDQ distance, nearest first."""
    within = get_replicas().search_hashes(collection, bits, settings["pdq_max_distance"], refresh=refresh,
                                          parts=parts, fresh=fresh)
    found = []
    for start in range(0, len(within), max(k, 100)):  # near-identical flat images can be many: read in rounds
        chunk = within[start:start + max(k, 100)]
        metadata = get_store().get_metadata(collection, [image_id for image_id, _ in chunk])
        found += [(image_id, distance, meta) for (image_id, distance), meta in zip(chunk, metadata)
                  if meta is not None and matches_filter(meta, wanted)]
        if len(found) >= k:
            break
    return found[:k]


def _fill_pdq_distances(collection: str, bits: bytes, candidates: list[dict], parts: list[str] | None) -> None:
    distances = get_replicas().hash_distances(collection, [match["id"] for match in candidates], bits, refresh=False,
                                              parts=parts)
    for match, distance in zip(candidates, distances):
        match["pdq_distance"] = distance


def _fill_cnn_scores(collection: str, probe: Probe, candidates: list[dict], parts: list[str] | None) -> None:
    """Score the PDQ-found candidates by cosine too, as the search would (None: deleted since)."""
    scores = get_replicas().scores(collection, probe.vector, [match["id"] for match in candidates],
                                   expand=probe.expand, parts=parts)
    for match, score in zip(candidates, scores):
        match["score"] = score


def _allow_match(allow_collection: str, info: dict | None, settings: dict, probe: "Probe", labels: dict,
                 found: dict | None = None) -> dict | None:
    """A near-duplicate of the probe in one allow collection (by its own settings), if it holds one; ``found``:
    its candidates gathered from the groups holding its buckets (else searched here)."""
    if info is None:
        return None
    if CNN in probe.signals:
        _check_descriptor(info, Descriptor(labels["model"], len(probe.vector), labels["weights"]))
    if found is None:
        best = next(iter(_ranked_matches(allow_collection, info, probe, settings, 1, None, {})[0]), None)
    else:
        best = next(iter(ranked(found, probe.signals, settings, 1, None)), None)
    return {"collection": allow_collection, **best} if best is not None and best["near_duplicate"] else None


def _verdict(info: dict | None, settings: dict, near_duplicate: bool) -> str | None:
    """What a match means by the collection's moderation settings; None (no verdict) for a collection nobody
    configured -- a plain search index is neither a block list nor an allow list."""
    return verdict(settings["kind"], near_duplicate) if info and info["configured"] else None


def _collection(collection: str, count_images: bool = True) -> tuple[dict | None, dict]:
    """The collection's info and its settings, in one round trip (None: nothing stored yet); without
    ``count_images``, its ``images`` may be None (a search stage's read)."""
    info = get_store().collection_info(collection, count_images)
    return info, info["settings"] if info else DEFAULT_COLLECTION_SETTINGS | {"buckets": 1}


def _check_descriptor(info: dict | None, descriptor) -> None:
    stored = None if info is None else (info["model"], info["weights"])
    if stored is not None and stored[0] is not None and stored != (descriptor.model, descriptor.weights):
        raise LookalikeError(
            "descriptor_mismatch",
            "This collection was indexed with another descriptor (model, pooling, input or weights) than this "
            "worker computes, so its scores would mean nothing; re-index it (drop it with DELETE "
            "/v1/collections/{collection}, then index its images again) or run workers with its descriptor.",
            {"collection": {"model": info["model"], "weights": info["weights"]}, "worker": descriptor.to_mapping()},
        )


def _run(task_id: str, work: Callable[[], dict[str, Any]], upload: bool = False) -> None:
    """Run one task's work and record its outcome; a failure stays inside its own task.

    One execution at a time: the task is claimed with a lease (renewed with the heartbeat), so
    a message delivered twice waits for the first execution and then finds the task finished.
    Redis going away midway (a restart, a failover) does not fail the task: it waits for Redis
    and does the work again from the start -- every write is idempotent, and an index task's
    effect happens once -- for at most ``LOOKALIKE_REDIS_OUTAGE_SECONDS``; after that its
    message goes back to the queue, to be done again from the start.

    ``upload``: the work reads the task's upload, which the claim reads with the task's record.
    """
    logs.task_id.set(task_id)
    store = get_store()
    deadline = time.monotonic() + get_settings().redis_outage_seconds
    execution = LEASES.start(task_id)
    outage = None  # the first error of an outage (logged once)
    try:
        while True:
            try:
                _run_once(task_id, execution, work, deadline, upload)
                if outage is not None:
                    log.info("task %s: done again from the start once Redis was back", task_id)
                return
            except REDIS_UNAVAILABLE as exc:
                if outage is None:
                    outage = exc
                    log.warning("task %s: Redis unavailable (%s); waiting for it to come back", task_id, exc)
                # A failover takes seconds, and a cluster client may reach some nodes meanwhile: never spin.
                time.sleep(CLAIM_RETRY_SECONDS)
                if not _wait_for_store(store, deadline):
                    raise Reject(f"Redis unavailable for {get_settings().redis_outage_seconds:g} s", requeue=True) \
                        from exc
    finally:
        LEASES.end(task_id)
        _claimed_upload.set(None)


class LeaseLost(Exception):
    """This execution no longer holds its task's lease: it stalled past it, and another execution runs the task
    (or has finished it). It must write nothing."""


# The lease this thread's task runs under (None: the task had no record to claim).
_running_under: ContextVar[str | None] = ContextVar("running_under", default=None)
# The upload this thread's task claimed with its record (task id, bytes or None): read once, with the claim.
_claimed_upload: ContextVar[tuple[str, bytes | None] | None] = ContextVar("claimed_upload", default=None)


def _check_still_running_it(task_id: str) -> None:
    """Raise LeaseLost unless this execution still holds the task: called right before a task writes."""
    execution = _running_under.get()
    if execution is not None and not get_store().holds_lease(task_id, execution):
        raise LeaseLost(task_id)


def _run_once(task_id: str, execution: str, work: Callable[[], dict[str, Any]], deadline: float,
              upload: bool = False) -> None:
    store = get_store()
    claim, record, uploaded = _claim(store, task_id, execution, deadline, upload)
    _running_under.set(execution if claim == "claimed" else None)
    _claimed_upload.set((task_id, uploaded) if upload and claim == "claimed" else None)
    logs.request_id.set(record.get("request_id") if record else None)
    if claim == "finished":
        log.info("task %s already finished; redelivery ignored", task_id)
        callback = record.get("callback") if record else None
        if callback and callback["state"] == CALLBACK_PENDING and not callback["attempts"]:
            schedule_webhook(task_id)  # the crash that caused this redelivery may have come before scheduling it
        return
    kind = record["kind"] if record else "unknown"
    if record and record.get("attempts") == 1:
        metrics.QUEUE_WAIT_SECONDS.labels(kind).observe(max(0.0, time.time() - _unix(record["submitted_at"])))
    started = time.perf_counter()
    error = None
    try:
        result = work()
    except LookalikeError as exc:
        error = exc
    except REDIS_UNAVAILABLE:
        raise  # not the task's failure: _run waits for Redis and does it again
    except LeaseLost:
        log.warning("task %s: this execution lost its lease (it stalled); another runs the task, so it writes "
                    "nothing", task_id)
        return
    except redis.exceptions.OutOfMemoryError:  # Redis at maxmemory refused the write
        error = LookalikeError("store_full", "The store is full; the image was not written.")
    except Exception:
        log.exception("task %s failed unexpectedly", task_id)
        error = LookalikeError("internal_error", "The worker failed unexpectedly; see its log.", {"task_id": task_id})
    if error is None and result is HANDED_OFF:  # its next stage, elsewhere, finishes it
        store.release_lease(task_id, execution)
        log.info("task %s passed on to its search group after %.1f ms", task_id, 1000 * (time.perf_counter() - started))
        return
    outcome = {"result": result} if error is None else {"error": error.to_dict()}
    if not store.finish_task(task_id, FAILED if error else SUCCEEDED, execution=_running_under.get(), **outcome):
        log.warning("task %s: another execution ran it while this one stalled; its outcome stands", task_id)
        return
    metrics.TASK_SECONDS.labels(kind).observe(time.perf_counter() - started)
    metrics.TASKS.labels(kind, FAILED if error else SUCCEEDED, error.code if error else "").inc()
    log.info("task %s %s in %.1f ms", task_id, error.code if error else SUCCEEDED,
             1000 * (time.perf_counter() - started))
    if record is not None and record.get("callback"):
        schedule_webhook(task_id)


def _claim(store, task_id: str, execution: str, deadline: float,
           upload: bool = False) -> tuple[str, dict | None, bytes | None]:
    """Claim the task for this execution; while another live execution holds it, wait (until ``deadline``,
    then give the message back to the queue) for it to finish or for its lease to lapse. The outcome, and the
    task's record and (with ``upload``, once claimed) its upload, read with the claim in its round trip."""
    while True:
        outcome, record, uploaded = store.claim_task_and_read(task_id, execution, WORKER_NAME, liveness_seconds(),
                                                              upload)
        if outcome != "busy":
            return outcome, record, uploaded
        if time.monotonic() > deadline:
            raise Reject("another execution of this task is still running", requeue=True)
        time.sleep(CLAIM_RETRY_SECONDS)


def _wait_for_store(store, deadline: float) -> bool:
    """True once Redis answers again; False if it has not by ``deadline``."""
    while time.monotonic() < deadline:
        try:
            store.redis.ping()
            return True
        except REDIS_UNAVAILABLE:
            time.sleep(CLAIM_RETRY_SECONDS)
    return False


def _unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _image_bytes(task_id: str, url: str | None) -> bytes:
    """The task's image: fetched from its URL (checked as an upload is), or as uploaded."""
    if url is None:
        return _load_upload_bytes(task_id)
    settings = get_settings()
    data = fetch_image(url, Allowlist(settings.fetch_allowlist), max_bytes=settings.max_upload_bytes,
                       timeout_seconds=settings.fetch_timeout_seconds, max_redirects=settings.fetch_max_redirects)
    inspect_image(data, settings.max_pixels)
    return data


def _load_upload_bytes(task_id: str) -> bytes:
    claimed = _claimed_upload.get()
    _claimed_upload.set(None)  # the bytes are the caller's now: not held through the forward pass and the write
    data = claimed[1] if claimed is not None and claimed[0] == task_id else get_store().get_upload(task_id)
    if data is None:
        raise LookalikeError("upload_expired", "The upload expired before a worker took the task; submit it again.")
    return data


def _model_labels() -> dict:
    """What produced a result; random weights are labelled loudly."""
    extractor = get_extractor()
    labels = {"model": extractor.descriptor.model, "weights": extractor.descriptor.weights}
    if extractor.weights.is_random:
        labels["warning"] = RANDOM_WEIGHTS_WARNING
    return labels

"""Tasks and batches: a submitted task as it stands (waiting for it to finish if asked), a bulk upload's
progress. Each answers only the key that submitted it (or an admin key)."""

from collections import Counter

from flask import Blueprint, jsonify, request

from api.auth import may_read_record
from api.openapi import Batch, Task, WaitQuery, responses, spec
from api.routes.common import _context, _wait_for
from api.waits import RETRY_AFTER_SECONDS
from shared.errors import LookalikeError
from shared.inputs import parse_bounded_int
from shared.task_records import FINISHED_STATES, QUEUED, RUNNING, task_resource

blueprint = Blueprint("tasks", __name__)


@blueprint.get("/v1/tasks/<task_id>")
@spec.validate(query=WaitQuery, resp=responses({"HTTP_200": Task}, 400, 404), tags=["tasks"], skip_validation=True)
def get_task(task_id: str):
    """A task as it stands; ``wait`` holds the answer until it finishes, within the bounds of api/waits.py."""
    settings, store = _context()["settings"], _context()["store"]
    wait = parse_bounded_int(request.args.get("wait"), default=0, low=0, high=settings.max_wait_seconds,
                             code="invalid_wait", name="wait")
    # Whose task it is is settled before any waiting: another key's task is a 404 at once.
    record = store.get_task(task_id)
    if record is None or not may_read_record(record):
        raise _task_not_found(task_id)
    waited = True
    if wait and record["state"] not in FINISHED_STATES:
        waited, latest = _wait_for(task_id, wait)
        if waited and latest is None:  # expired while waited on
            raise _task_not_found(task_id)
        record = latest or record
    response = jsonify(task_resource(record))
    if not waited and record["state"] not in FINISHED_STATES:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)  # answered without waiting: busy
    return response


def _task_not_found(task_id: str) -> LookalikeError:
    return LookalikeError("task_not_found", "No such task; task records expire after "
                          f"{_context()['settings'].task_ttl_seconds} seconds.", {"task_id": task_id[:100]})


@blueprint.get("/v1/batches/<batch_id>")
@spec.validate(resp=responses({"HTTP_200": Batch}, 404), tags=["tasks"], skip_validation=True)
def get_batch(batch_id: str):
    """Progress of a bulk upload: counts per state and each item's state."""
    store = _context()["store"]
    batch = store.get_batch(batch_id)
    if batch is None or not may_read_record(batch):
        raise LookalikeError("batch_not_found", "No such batch; batch records expire with their tasks.",
                             {"batch_id": batch_id[:100]})
    task_ids = [item["task_id"] for item in batch["items"] if item["task_id"]]
    outcomes = dict(zip(task_ids, store.task_outcomes(task_ids)))
    items, counts = [], Counter()
    for item in batch["items"]:
        if item["task_id"] is None:
            state, error = "rejected", item["error"]
        else:
            state, error = outcomes[item["task_id"]]
            state = state or "expired"
        counts[state] += 1
        items.append({"image_id": item["image_id"], "task_id": item["task_id"], "state": state, "error": error})
    return jsonify({
        "batch_id": batch_id,
        "collection": batch["collection"],
        "submitted_at": batch["submitted_at"],
        "total": len(items),
        "counts": {state: counts[state] for state in (QUEUED, RUNNING, *FINISHED_STATES, "rejected", "expired")},
        "finished": counts[QUEUED] + counts[RUNNING] == 0,
        "items": items,
    })

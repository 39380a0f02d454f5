"""Tasks as their records keep them and the API shows them: their states, their webhook's delivery states,
the request fields kept, and the task resource (GET /v1/tasks/{id}, and a webhook's body).

The task names and queues are shared/queue.py's; the records themselves are shared/store.py's.
"""

from typing import Any

# --- Task states as the API shows them ------------------------------------------------------
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINISHED_STATES = (SUCCEEDED, FAILED)
# A task's webhook: waiting for the task (pending), between failed attempts (retrying), done.
CALLBACK_PENDING, CALLBACK_RETRYING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "retrying", "delivered", "failed"
# Request fields a task record keeps and its resource shows.
TASK_REQUEST_FIELDS = ("collection", "image_id", "url", "k", "min_score", "filter", "signals", "expand",
                       "allow_collections", "request_id")


def task_resource(record: dict[str, Any], *, with_callback: bool = True) -> dict[str, Any]:
    """A task as GET /v1/tasks/{id} shows it (and a webhook sends it, without its own delivery state)."""
    resource = {
        "task_id": record["task_id"],
        "kind": record["kind"],
        "state": record["state"],
        "result": record.get("result"),
        "error": record.get("error"),
        "submitted_at": record["submitted_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }
    resource.update({name: record[name] for name in TASK_REQUEST_FIELDS if name in record})
    if with_callback and record.get("callback"):
        resource["callback"] = record["callback"]
    return resource


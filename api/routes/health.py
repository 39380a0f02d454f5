"""Health and metrics: liveness (``/healthz``), readiness (``/readyz``, of this API process or with
``?workers=1`` of the whole service) and Prometheus metrics."""

from flask import Blueprint, jsonify, request
from spectree import Response

from api.auth import may_see_collection
from api.observability import metrics_response
from api.openapi import Error, Health, Ready, ReadyQuery, responses, spec
from api.routes.common import _context
from shared.errors import LookalikeError
from shared.inputs import parse_flag

blueprint = Blueprint("health", __name__)


@blueprint.get("/metrics")
@spec.validate(resp=responses({"HTTP_200": None}), tags=["health"], skip_validation=True)
def metrics():
    """Prometheus metrics of the API (needs the ``metrics`` scope when keys are on); per-collection series
    only of the collections the key may use."""
    return metrics_response(may_see_collection)


@blueprint.get("/healthz")
@spec.validate(resp=Response(HTTP_200=Health), tags=["health"], security={}, skip_validation=True)
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
@spec.validate(query=ReadyQuery, resp=Response(HTTP_200=Ready, HTTP_503=Error), tags=["health"], security={},
               skip_validation=True)
def readyz():
    """Whether this API process can answer: ready while Redis answers. With no worker alive the API still
    answers everything that needs none (results, images, settings; submissions wait in the queue), so it
    stays in the load balancer: ``status`` says ``degraded``. ``?workers=1`` asks for the whole service:
    ``503 not_ready`` until a worker with its model loaded has reported in."""
    settings, store = _context()["settings"], _context()["store"]
    need_workers = parse_flag(request.args.get("workers"), code="invalid_workers", name="workers")
    store.redis.ping()  # a connection error becomes 503 store_unavailable
    workers = store.live_workers(max_age_seconds=3 * settings.heartbeat_seconds)
    if not workers and need_workers:
        raise LookalikeError("not_ready", "No worker with a loaded model has reported in.",
                             {"redis": "ok", "workers": []})
    weights = sorted({worker["weights"] for worker in workers})
    body = {"status": "ready" if workers else "degraded", "redis": "ok", "weights": weights, "workers": workers}
    if not workers:
        body["warning"] = "No worker with a loaded model has reported in: submitted tasks wait in the queue."
    elif any(worker["random_weights"] for worker in workers):
        body["warning"] = ("RANDOM weights in use: similarity scores do not reflect image content. "
                           "Tests and smoke runs only.")
    return jsonify(body)

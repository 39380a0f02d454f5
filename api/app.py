"""The Flask application factory."""

import logging

from flask import Flask
from PIL import Image
from werkzeug.middleware.proxy_fix import ProxyFix

from api.auth import register_auth
from api.errors import register_error_handlers
from api.idempotency import register_idempotency
from api.observability import register_observability
from api.openapi import register_openapi
from api.limits import register_rate_limits
from api.routes import register_routes
from api.routes.common import apply_request_limits
from api.waits import WaitSlots
from shared.logs import configure_logging
from shared.queue import make_celery
from shared.settings import Settings, get_settings
from shared.store import Store

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    configure_logging("api", settings.log_format, settings.log_level)
    app = Flask(__name__)
    # The default for routes that set no limit of their own (upload routes set theirs).
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False
    app.extensions["lookalike"] = {
        "settings": settings,
        "store": Store.from_settings(settings),
        "celery": make_celery(settings),
        "wait_slots": WaitSlots(settings.max_waiting_polls, settings.max_waiting_polls_per_key),
    }
    if settings.trusted_proxies:
        # Behind N proxies: the client address (for rate limits and the failed-authentication count) is
        # the one the Nth proxy from here saw; what a client writes in X-Forwarded-For itself is ignored.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
    register_routes(app)
    register_openapi(app)
    register_observability(app)  # first: every answer, refusals included, is counted and logged
    register_auth(app)  # before the rate limits: a request without a valid key never counts
    register_rate_limits(app, settings)
    app.before_request(apply_request_limits)  # before any hook reads a body
    register_idempotency(app)  # after auth: keys are scoped to the caller's API key
    register_error_handlers(app)
    warm_up(app.extensions["lookalike"])
    return app


def warm_up(context: dict) -> None:
    """Do the one-off set-up of the first request now: Pillow's format plugins, the Celery
    app and a broker connection. Under load, 32 first requests at once took 150-180 ms each
    paying for it (bench/load.py). Redis may be down at start: then the first requests pay."""
    Image.init()
    try:
        context["store"].redis.ping()
        with context["celery"].producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
    except Exception:  # noqa: BLE001 - an unreachable Redis is reported by the requests themselves
        log.warning("could not reach Redis while starting; requests will answer 503 until it is back")

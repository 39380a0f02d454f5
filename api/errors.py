"""Every error leaves the API as ``{"error": {"code", "message", "details"}}``: never HTML, never a bare 500."""

import logging

import redis
from flask import Flask, jsonify
from kombu.exceptions import OperationalError as BrokerUnavailable
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from shared.errors import LookalikeError
from shared.store import REDIS_UNAVAILABLE

log = logging.getLogger(__name__)

# Werkzeug's own HTTP errors (routing, body size, ...) mapped onto catalogue codes.
HTTP_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large", 429: "rate_limited"}
# When to try again, for answers that say "not now" (RFC 9110 Retry-After): a Redis restart or failover
# takes seconds; a request with the same Idempotency-Key is being answered and will be in a moment;
# a full store needs an operator, so clients are slowed down rather than invited to hammer it.
RETRY_AFTER_SECONDS = {"idempotency_key_in_progress": 1, "store_full": 60}
RETRY_AFTER_UNAVAILABLE_SECONDS = 5  # any other 503


def error_response(error: LookalikeError):
    response = jsonify({"error": error.to_dict()})
    response.status_code = error.http_status
    if isinstance(error.details.get("retry_after"), int):  # our own 429s (Flask-Limiter's set the header themselves)
        response.headers["Retry-After"] = str(error.details["retry_after"])
    elif error.code in RETRY_AFTER_SECONDS:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS[error.code])
    elif error.http_status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE_SECONDS)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(LookalikeError)
    def handle_lookalike_error(error: LookalikeError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        code = HTTP_STATUS_CODES.get(error.code or 400, "bad_request")
        response = error_response(LookalikeError(code, error.description or error.name))
        response.status_code = error.code or 400
        if isinstance(error, MethodNotAllowed) and error.valid_methods:  # RFC 9110: a 405 names what is allowed
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    @app.errorhandler(redis.exceptions.OutOfMemoryError)
    def handle_store_full(error: Exception):
        log.warning("Redis refused a write: %s", error)
        return error_response(LookalikeError("store_full", "The store is full; delete images or add memory."))

    @app.errorhandler(BrokerUnavailable)
    def handle_store_unavailable(error: Exception):
        log.warning("Redis unavailable: %s", error)
        return error_response(LookalikeError("store_unavailable", "The store is unavailable; retry shortly."))

    for unavailable in REDIS_UNAVAILABLE:  # restarting, failing over, a cluster slot moving: retry shortly
        app.register_error_handler(unavailable, handle_store_unavailable)

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(LookalikeError("internal_error", "An unexpected error occurred."))

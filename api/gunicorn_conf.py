"""Gunicorn settings for the API, derived from Lookalike's settings.

Threads, not only processes: ``GET /v1/tasks/{id}?wait=`` holds a request open for up to
30 seconds while it waits on Redis, which costs a thread, not a CPU.
"""

import os

from shared.settings import get_settings

_settings = get_settings()

bind = f"{_settings.host}:{_settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 16
timeout = 60
accesslog = "-"

"""Gunicorn settings for the API, derived from Lookalike's settings.

Threads, not only processes: ``GET /v1/tasks/{id}?wait=`` holds a request open for up to
30 seconds while it waits on Redis, which costs a thread, not a CPU. At most
``LOOKALIKE_MAX_WAITING_POLLS`` (8) of the 16 threads wait at once (api/waits.py), so the
rest always answer /healthz and everything else. A thread also blocks while it reads a
request: in production a buffering proxy reads them first (deploy/nginx/lookalike.conf).
"""

import os
import tempfile

from shared.settings import get_settings

# prometheus_client's multiprocess mode: each worker process writes its counts to files
# here, /metrics adds them up. Set before any worker imports prometheus_client.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="lookalike-metrics-"))

_settings = get_settings()

bind = f"{_settings.host}:{_settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = 16  # keep above LOOKALIKE_MAX_WAITING_POLLS
timeout = 60
accesslog = None  # the app logs each request itself, with its request id (api/observability.py)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

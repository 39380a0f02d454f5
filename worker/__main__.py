"""``python -m worker [--role all|webhooks] [celery worker options]``.

``--role all`` (the default) checks the weights, loads VGG16, then consumes the index and
query queues. ``--role webhooks`` consumes only webhook deliveries, without the model: a
process of its own, so receivers that answer slowly can never hold the threads model work
needs. A deployment runs both (`make run` and Compose do).

The model is built here, in the process that runs the tasks: the worker uses Celery's
thread pool, so there is no fork after TensorFlow has started (TensorFlow and CUDA do not
survive one). Other arguments go to ``celery worker`` (e.g. ``-Q query`` for a query-only
worker, ``--loglevel DEBUG``). The exit status is Celery's: non-zero when the worker stopped
on an error, so a supervisor restarts it.
"""

import argparse
import sys

from threadpoolctl import threadpool_limits

from shared.logs import configure_logging
from shared.settings import get_settings
from worker import metrics, runtime
from worker.celery_app import app
from worker.runtime import ROLES, WORKER_NAME, get_extractor
from worker.weights import WeightsUnavailable


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", add_help=False)
    parser.add_argument("--role", choices=sorted(ROLES), default="all")
    options, celery_args = parser.parse_known_args(argv)
    runtime.set_role(options.role)
    settings = get_settings()
    configure_logging("worker", settings.log_format, settings.log_level)
    if runtime.role_holds_model():
        # Single-threaded BLAS for search: TensorFlow's own threads keep the cores busy (and
        # spin after each forward pass), and BLAS threads competing with them added 45 ms to a
        # matrix-vector product that takes under 1 ms alone (10,000 vectors, 2 cores; see
        # docs/benchmarks.md).
        threadpool_limits(limits=1, user_api="blas")
        try:
            get_extractor()
        except WeightsUnavailable as exc:
            print(f"lookalike worker: cannot start: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # a file that is not VGG16 weights, a corrupt HDF5 file, ...
            print(f"lookalike worker: cannot load weights {settings.weights!r}: {exc}", file=sys.stderr)
            return 2
    metrics.serve(settings.worker_metrics_port)
    status = app.start([
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker_threads}",
        f"--queues={','.join(ROLES[options.role])}",
        f"--hostname=lookalike-{options.role}-{WORKER_NAME.replace(':', '-')}@%h",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        *celery_args,
    ])
    return status or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

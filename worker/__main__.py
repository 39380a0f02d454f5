"""``python -m worker``: check the weights, load VGG16, then consume the index, query and webhook queues.

The model is built here, in the process that runs the tasks: the worker uses Celery's
thread pool, so there is no fork after TensorFlow has started (TensorFlow and CUDA do not
survive one). Extra arguments go to ``celery worker`` (e.g. ``-Q query`` for a query-only
worker, ``--loglevel DEBUG``).
"""

import sys

from threadpoolctl import threadpool_limits

from shared.schemas import INDEX_QUEUE, QUERY_QUEUE, WEBHOOK_QUEUE
from shared.logs import configure_logging
from shared.settings import get_settings
from worker import metrics
from worker.celery_app import app
from worker.runtime import WORKER_NAME, get_extractor
from worker.weights import WeightsUnavailable


def main(argv: list[str]) -> int:
    settings = get_settings()
    configure_logging("worker", settings.log_format, settings.log_level)
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
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.worker_threads}",
            f"--queues={INDEX_QUEUE},{QUERY_QUEUE},{WEBHOOK_QUEUE}",
            f"--hostname=lookalike-{WORKER_NAME.replace(':', '-')}@%h",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            *argv,
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m worker [--role all|embed|search|webhooks] [--groups a,b] [celery worker options]``.

- ``--role embed`` checks the weights, loads VGG16 (one process per GPU), then consumes the
  index and query queues: it computes vectors and PDQ hashes, stores indexed images, and
  passes each query or check on to the search group holding its collection.
- ``--role search --groups a,b`` (default: every group of ``LOOKALIKE_SEARCH_GROUPS``) never
  imports TensorFlow: it holds replicas of its groups' collections and ranks the queries
  passed to ``search.<group>``. Two processes of a group share its queue (throughput, and
  failover: the other goes on when one dies).
- ``--role all`` (the default, what `make run` starts) is both in one process, ranking
  queries itself without the hop.
- ``--role webhooks`` consumes only webhook deliveries, without the model: a process of
  its own, so receivers that answer slowly can never hold the threads model work needs.

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
    parser.add_argument("--role", choices=ROLES, default="all")
    parser.add_argument("--groups", type=lambda value: tuple(part.strip() for part in value.split(",") if part.strip()))
    options, celery_args = parser.parse_known_args(argv)
    try:
        runtime.set_role(options.role, options.groups)
    except ValueError as exc:
        print(f"lookalike worker: {exc}", file=sys.stderr)
        return 2
    settings = get_settings()
    configure_logging("worker", settings.log_format, settings.log_level)
    # Single-threaded BLAS for search: TensorFlow's own threads keep the cores busy (and spin
    # after each forward pass), and BLAS threads competing with them added 45 ms to a
    # matrix-vector product that takes under 1 ms alone (10,000 vectors, 2 cores; see
    # docs/benchmarks.md). A search process without the model keeps one thread too: a host
    # runs several, each answering one query at a time per collection.
    threadpool_limits(limits=1, user_api="blas")
    if runtime.role_holds_model():
        try:
            get_extractor()
            runtime.get_hash_processes().warm()  # (LOOKALIKE_HASH_PROCESSES: started before the first image)
        except (WeightsUnavailable, runtime.WarmUpFailed) as exc:
            print(f"lookalike worker: cannot start: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - not VGG16 weights, a corrupt HDF5 file...: exit 2, said plainly
            print(f"lookalike worker: cannot load weights {settings.weights!r}: {exc}", file=sys.stderr)
            return 2
    metrics.serve(settings.worker_metrics_port)
    status = app.start([
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker_threads}",
        f"--queues={','.join(runtime.role_queues())}",
        f"--hostname=lookalike-{options.role}-{WORKER_NAME.replace(':', '-')}@%h",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        *celery_args,
    ])
    return status or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Load on a local stack: concurrent clients mixing index, query and poll for a bounded time.

    .venv/bin/python bench/load.py [--clients 32] [--seconds 60] [--json]

Starts its own stack (scripts/run_local.py on private ports: embedded Redis, one worker,
gunicorn) and sends traffic to 127.0.0.1 only. Each client loops: pick index, query or
poll by weight, send it, think 0.2-0.8 s; clients join over the first 2 s (a burst of 32
first requests at one instant queues behind two cores whatever the service). Reports API
latency per kind of request (the 202 of an enqueue, the 200 of a poll without waiting),
errors, and how long the backlog takes to drain once the clients stop.
"""

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import IMAGE_PATHS, Stack  # noqa: E402

MIX = {"index": 0.10, "query": 0.05, "poll": 0.85}
RAMP_UP_SECONDS = 2.0


def client_loop(url: str, collection: str, deadline: float, seed: int, clients: int, submitted: list, results: dict,
                lock: threading.Lock) -> None:
    rng = random.Random(seed)
    time.sleep(seed * RAMP_UP_SECONDS / clients)  # clients join over the ramp-up, as load tools' spawn rate
    http = requests.Session()
    images = [path.read_bytes() for path in IMAGE_PATHS]
    while time.monotonic() < deadline:
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "poll" and not submitted:
            kind = "index"
        started = time.perf_counter()
        try:
            if kind == "index":
                response = http.post(f"{url}/v1/collections/{collection}/images",
                                     files={"image": ("a.jpg", rng.choice(images))}, data={"id": uuid.uuid4().hex})
                ok = response.status_code == 202
            elif kind == "query":
                response = http.post(f"{url}/v1/collections/{collection}/queries",
                                     files={"image": ("q.jpg", rng.choice(images))}, data={"k": "10"})
                ok = response.status_code == 202
            else:
                response = http.get(f"{url}/v1/tasks/{rng.choice(submitted)}")
                ok = response.status_code == 200
        except requests.RequestException:
            ok, response = False, None
        elapsed = time.perf_counter() - started
        with lock:
            results[kind].append(elapsed)
            if not ok:
                results["errors"].append((kind, getattr(response, "status_code", "no response")))
            elif kind in ("index", "query"):
                submitted.append(response.json()["task_id"])
        time.sleep(rng.uniform(0.2, 0.8))


def drain_seconds(url: str, task_ids: list[str]) -> tuple[float, int]:
    """Seconds until every submitted task has finished, and how many failed."""
    started = time.perf_counter()
    http = requests.Session()
    failed = 0
    for task_id in task_ids:
        while True:
            state = http.get(f"{url}/v1/tasks/{task_id}", params={"wait": 30}).json()["state"]
            if state in ("succeeded", "failed"):
                failed += state == "failed"
                break
    return time.perf_counter() - started, failed


def ms(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 1) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike load test (loopback only)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        stack = Stack(Path(folder))
        try:
            collection = f"load-{uuid.uuid4().hex[:8]}"
            submitted: list[str] = []
            results: dict = {"index": [], "query": [], "poll": [], "errors": []}
            lock = threading.Lock()
            deadline = time.monotonic() + args.seconds
            clients = [threading.Thread(target=client_loop, args=(stack.url, collection, deadline, seed, args.clients,
                                                                  submitted, results, lock))
                       for seed in range(args.clients)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            drained, failed_tasks = drain_seconds(stack.url, list(submitted))
        finally:
            stack.stop()

    figures = {
        "clients": args.clients, "seconds": args.seconds,
        "requests": {kind: len(results[kind]) for kind in MIX},
        "errors": len(results["errors"]), "error_samples": results["errors"][:5],
        "enqueue_p50_ms": ms(results["index"] + results["query"], 50),
        "enqueue_p99_ms": ms(results["index"] + results["query"], 99),
        "poll_p50_ms": ms(results["poll"], 50), "poll_p99_ms": ms(results["poll"], 99),
        "tasks_submitted": len(submitted), "tasks_failed": failed_tasks,
        "backlog_drained_after_s": round(drained, 1),
        "requests_per_second": round(sum(len(results[kind]) for kind in MIX) / args.seconds, 1),
    }
    figures["goals"] = {"0 errors": figures["errors"] == 0 and failed_tasks == 0,
                        "enqueue p99 < 100 ms": figures["enqueue_p99_ms"] < 100,
                        "poll p99 < 100 ms": figures["poll_p99_ms"] < 100}
    print(json.dumps(figures, indent=2) if args.json else "\n".join(f"{k:<26} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

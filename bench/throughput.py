"""End-to-end throughput and latency of a running Lookalike, measured through its HTTP API.

    make run                                   # in one terminal (or any deployed stack)
    .venv/bin/python bench/throughput.py       # in another; --json for machine-readable output

Indexes N images (the test photographs, cycled, under distinct ids) with concurrent single
requests and times from the first submit until every task has succeeded; then runs
sequential queries on the otherwise idle system and reports latency percentiles from
submit to result. Each figure is the median over --repeats runs.
"""

import argparse
import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

IMAGES = sorted((Path(__file__).resolve().parents[1] / "tests" / "data").glob("*.jpg"))


def submit_and_wait(http: requests.Session, url: str, path: str, image: bytes, form: dict) -> dict:
    submitted = http.post(f"{url}{path}", files={"image": ("image.jpg", image)}, data=form)
    submitted.raise_for_status()
    while True:
        task = http.get(url + submitted.json()["status_url"], params={"wait": 30}).json()
        if task["state"] in ("succeeded", "failed"):
            if task["state"] == "failed":
                raise RuntimeError(f"task failed: {task['error']}")
            return task


def index_run(url: str, collection: str, count: int, clients: int) -> float:
    """Images per second, from the first submit until the last index task succeeded."""
    images = [path.read_bytes() for path in IMAGES]
    sessions = [requests.Session() for _ in range(clients)]

    def index_one(number: int) -> None:
        submit_and_wait(sessions[number % clients], url, f"/v1/collections/{collection}/images",
                        images[number % len(images)], {"id": f"bench/{number}"})

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(index_one, range(count)))
    return count / (time.perf_counter() - started)


def query_latencies(url: str, collection: str, count: int) -> list[float]:
    images = [path.read_bytes() for path in IMAGES]
    http = requests.Session()
    latencies = []
    for number in range(count):
        started = time.perf_counter()
        submit_and_wait(http, url, f"/v1/collections/{collection}/queries", images[number % len(images)], {"k": "10"})
        latencies.append(time.perf_counter() - started)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=int, default=60, help="images indexed per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients while indexing")
    parser.add_argument("--queries", type=int, default=30, help="sequential queries per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ready = requests.get(f"{args.url}/readyz").json()
    rates, p50s, p95s = [], [], []
    for _ in range(args.repeats):
        collection = f"bench-{uuid.uuid4().hex[:8]}"
        rates.append(index_run(args.url, collection, args.images, args.clients))
        latencies = query_latencies(args.url, collection, args.queries)
        p50s.append(percentile(latencies, 0.50))
        p95s.append(percentile(latencies, 0.95))
    figures = {
        "weights": ready.get("weights"),
        "workers": len(ready.get("workers", [])),
        "images_per_run": args.images,
        "clients": args.clients,
        "repeats": args.repeats,
        "index_images_per_second_median": round(statistics.median(rates), 2),
        "index_images_per_second_runs": [round(rate, 2) for rate in rates],
        "query_latency_p50_ms_median": round(1000 * statistics.median(p50s), 1),
        "query_latency_p95_ms_median": round(1000 * statistics.median(p95s), 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        width = max(map(len, figures))
        for name, value in figures.items():
            print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

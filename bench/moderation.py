"""Costs of the moderation features, measured side by side in one run.

    make bench                      # or: .venv/bin/python bench/moderation.py [--json]

1. PDQ hashing per image by input size: the full image vs the service's path (a copy of at
   most 512 px a side), next to one image's share of a batched VGG16 forward pass.
2. PDQ search through the replica's hash index over 100,000 and 1,000,000 hashes (bench/scale.py
   sets it beside a scan and faiss).
3. Through the HTTP API of a stack started here (`scripts/run_local.py`, random weights):
   check latency with signals cnn / pdq / both; webhook delivery delay (task finished ->
   receiver); an Idempotency-Key replay next to the first POST; indexing by URL next to
   indexing an upload.

Each figure is a median (of --repeats runs, or over --samples requests).
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import (  # noqa: E402
    IMAGE_PATHS, SEED, WEIGHTS, Stack, fill_collection, median_seconds, report, wait_all)
from shared.images import decode_image  # noqa: E402
from tests.local_http import Answer, LocalHttpServer  # noqa: E402
from worker.pdq import HashIndex, PdqHash, compute_pdq  # noqa: E402

SIDES = (256, 1024, 2048, 4000)


def hashing_costs(repeats: int) -> dict:
    import pdqhash

    photo = decode_image(IMAGE_PATHS[0].read_bytes())
    by_side = {}
    for side in SIDES:
        pixels = cv2.resize(photo, (side, side * 3 // 4), interpolation=cv2.INTER_CUBIC)
        rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        by_side[side] = {
            "full_image_ms": round(1000 * median_seconds(lambda rgb=rgb: pdqhash.compute(rgb), repeats), 2),
            "service_ms": round(1000 * median_seconds(lambda pixels=pixels: compute_pdq(pixels), repeats), 2),
        }
    return by_side


def forward_ms_per_image(repeats: int, batch: int = 16) -> float:
    from worker.extractor import FeatureExtractor
    from worker.weights import resolve_weights

    extractor = FeatureExtractor(resolve_weights(WEIGHTS, SEED), seed=SEED)
    one = extractor.preprocess(decode_image(IMAGE_PATHS[0].read_bytes()))
    images = np.repeat(one[None], batch, axis=0)
    extractor.forward(images)
    return 1000 * median_seconds(lambda: extractor.forward(images), repeats) / batch


def pdq_search_costs(sizes: list[int], queries: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for size in sizes:
        index = HashIndex(min_quality=50)
        hashes = rng.integers(0, 256, (size, 32), dtype=np.uint8)
        for number, bits in enumerate(hashes):
            index.put(f"h/{number}", PdqHash(bits.tobytes(), 100))
        probes = [hashes[rng.integers(size)].tobytes() for _ in range(queries)]
        timings = []
        for probe in probes:
            started = time.perf_counter()
            index.within(probe, 31)
            timings.append(time.perf_counter() - started)
        out[size] = round(1000 * statistics.median(timings), 2)
    return out


def post_check(http, url, collection, image: bytes, signals: str, **form) -> dict:
    response = http.post(f"{url}/v1/collections/{collection}/checks", files={"image": ("q.jpg", image)},
                         data={"signals": signals, **form})
    response.raise_for_status()
    return response.json()


def check_latencies(url: str, collection: str, samples: int) -> dict:
    images = [path.read_bytes() for path in IMAGE_PATHS]
    http = requests.Session()
    out = {}
    for signals in ("cnn", "pdq", "both"):
        timings = []
        for number in range(samples + 2):
            started = time.perf_counter()
            wait_all(http, url, [post_check(http, url, collection, images[number % len(images)], signals)["task_id"]])
            if number >= 2:
                timings.append(time.perf_counter() - started)
        out[signals] = round(1000 * statistics.median(timings), 1)
    return out


def webhook_delays(url: str, collection: str, receiver: LocalHttpServer, samples: int) -> float:
    """Median seconds from a task's finished_at to its webhook arriving."""
    http = requests.Session()
    image = IMAGE_PATHS[1].read_bytes()
    delays = []
    for _ in range(samples):
        path = f"/hook/{uuid.uuid4().hex}"
        arrived = []
        receiver.route(path, lambda _request, arrived=arrived: arrived.append(time.time()) or Answer(204))
        task_id = post_check(http, url, collection, image, "both", callback_url=receiver.base_url + path)["task_id"]
        deadline = time.monotonic() + 30
        while not arrived and time.monotonic() < deadline:
            time.sleep(0.005)
        task = http.get(f"{url}/v1/tasks/{task_id}").json()
        finished = datetime.fromisoformat(task["finished_at"].replace("Z", "+00:00")).timestamp()
        delays.append(arrived[0] - finished)
    return round(1000 * statistics.median(delays), 1)


def idempotency_costs(url: str, collection: str, samples: int) -> dict:
    http = requests.Session()
    image = IMAGE_PATHS[2].read_bytes()
    first, replay, task_ids = [], [], []
    for number in range(samples):
        headers = {"Idempotency-Key": f"bench-{uuid.uuid4().hex}"}
        for timings in (first, replay):
            started = time.perf_counter()
            response = http.post(f"{url}/v1/collections/{collection}/images", files={"image": ("a.jpg", image)},
                                 data={"id": f"idem/{number}"}, headers=headers)
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
        task_ids.append(response.json()["task_id"])
    wait_all(http, url, task_ids)  # before the next measurement, which they would slow down
    return {"first_post_ms": round(1000 * statistics.median(first), 2),
            "replay_ms": round(1000 * statistics.median(replay), 2)}


def fetch_costs(url: str, collection: str, images_server: LocalHttpServer, samples: int) -> dict:
    http = requests.Session()
    image = IMAGE_PATHS[3].read_bytes()
    image_url = images_server.route("/images/photo.jpg", Answer(200, image, {"Content-Type": "image/jpeg"}))
    by_upload, by_url = [], []
    for number in range(samples):
        for timings, form, files in ((by_upload, {}, {"image": ("a.jpg", image)}), (by_url, {"url": image_url}, None)):
            started = time.perf_counter()
            response = http.post(f"{url}/v1/collections/{collection}/images", data={"id": f"f/{number}", **form},
                                 files=files)
            response.raise_for_status()
            wait_all(http, url, [response.json()["task_id"]])
            timings.append(time.perf_counter() - started)
    return {"index_upload_ms": round(1000 * statistics.median(by_upload), 1),
            "index_by_url_ms": round(1000 * statistics.median(by_url), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike moderation-features benchmark")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--stored-vectors", type=int, default=10_000)
    parser.add_argument("--scan-sizes", default="100000,1000000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    hashing = hashing_costs(args.repeats)
    forward = forward_ms_per_image(max(3, args.repeats // 2))
    scans = pdq_search_costs([int(size) for size in args.scan_sizes.split(",")], queries=50)
    with LocalHttpServer() as local, tempfile.TemporaryDirectory() as folder:
        allow = f"127.0.0.1:{local.port}"
        stack = Stack(Path(folder), {"LOOKALIKE_CALLBACK_ALLOWLIST": allow, "LOOKALIKE_FETCH_ALLOWLIST": allow,
                                     "LOOKALIKE_WEBHOOK_SECRET": "bench-secret"})
        try:
            collection = f"bench-moderation-{uuid.uuid4().hex[:8]}"
            http = requests.Session()
            tasks = [http.post(f"{stack.url}/v1/collections/{collection}/images",
                               files={"image": (path.name, path.read_bytes())},
                               data={"id": path.stem}).json()["task_id"]
                     for path in IMAGE_PATHS]
            wait_all(http, stack.url, tasks)
            fill_collection(stack, collection, args.stored_vectors)
            checks = check_latencies(stack.url, collection, args.samples)
            webhook = webhook_delays(stack.url, collection, local, max(10, args.samples // 2))
            idempotency = idempotency_costs(stack.url, f"{collection}-idem", args.samples)
            fetch = fetch_costs(stack.url, f"{collection}-fetch", local, max(10, args.samples // 3))
        finally:
            stack.stop()

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "pdq_hash_ms_by_side": hashing,
        "vgg16_forward_ms_per_image_batch16": round(forward, 1),
        "pdq_search_ms_by_hashes": scans,
        "stored_vectors": args.stored_vectors,
        "check_p50_ms_by_signals": checks,
        "webhook_delay_p50_ms": webhook,
        **idempotency,
        **fetch,
    }
    report(figures, args.json)


if __name__ == "__main__":
    main()

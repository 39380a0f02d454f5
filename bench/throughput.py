"""Throughput and latency of Lookalike, side by side with the model's own limit, in one run.

    make bench                      # or: .venv/bin/python bench/throughput.py [--json]

1. limit: bare VGG16 forward passes in a loop at each batch size; the best images/s.
2. write-up: the original write-up's ``extract_features`` per image -- build VGG16, load the
   weights file, ``load_img`` at 224x224, scale by 1/255, ``model.predict``, flatten.
3. Lookalike end to end: N images through the HTTP API of a stack started here
   (`scripts/run_local.py`: embedded Redis, one worker, gunicorn), as bulk requests and
   as single requests, timed from the first submit until every task has succeeded.
4. query latency on the otherwise idle stack: single queries against a collection of
   10,000 stored vectors, submit to result, next to the bare forward time of one image.

All with the same random weights (ImageNet weights cannot be downloaded on our build
machines; speed does not depend on the values of the weights). Each figure is the median
of --repeats runs.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.embedded_redis import free_port  # noqa: E402
from shared.images import decode_image  # noqa: E402
from shared.processes import ChildProcess  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Store  # noqa: E402

IMAGE_PATHS = sorted((REPO / "tests" / "data").glob("*.jpg"))
WEIGHTS, SEED = "random", 0


def median_seconds(action, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


# --- 1. the model's own limit ---------------------------------------------------------------------


def measure_limit(repeats: int, batch_sizes: list[int]) -> dict:
    from worker.extractor import FeatureExtractor
    from worker.weights import resolve_weights

    extractor = FeatureExtractor(resolve_weights(WEIGHTS, SEED), seed=SEED)
    one = extractor.preprocess(decode_image(IMAGE_PATHS[0].read_bytes()))
    rates = {}
    single_forward = None
    for size in batch_sizes:
        batch = np.repeat(one[None], size, axis=0)
        extractor.forward(batch)  # warm-up: graph tracing and kernel selection
        seconds = median_seconds(lambda batch=batch: extractor.forward(batch), repeats)
        rates[size] = size / seconds
        if size == 1:
            single_forward = seconds
    best = max(rates, key=rates.get)
    return {"images_per_second": rates[best], "best_batch": best, "by_batch": rates,
            "single_image_forward_ms": 1000 * single_forward, "model": extractor}


# --- 2. the original write-up's approach ------------------------------------------------------------


def measure_writeup(extractor, count: int) -> dict:
    import keras

    with tempfile.TemporaryDirectory() as folder:
        weights_file = Path(folder) / "vgg16_notop.weights.h5"
        extractor.model.save_weights(str(weights_file))

        def extract_features(image_path: Path) -> np.ndarray:
            model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
            model.load_weights(str(weights_file))
            image = keras.utils.load_img(str(image_path), target_size=(224, 224))
            pixels = np.expand_dims(keras.utils.img_to_array(image), axis=0) / 255.0
            return model.predict(pixels, verbose=0).flatten()

        started = time.perf_counter()
        for number in range(count):
            extract_features(IMAGE_PATHS[number % len(IMAGE_PATHS)])
        return {"images_per_second": count / (time.perf_counter() - started), "images": count}


# --- 3 and 4. Lookalike through its HTTP API -----------------------------------------------------------


class Stack:
    """`make run`'s launcher on private ports and a private data folder."""

    def __init__(self, folder: Path, extra_env: dict[str, str] | None = None, ready_timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
        env.update(LOOKALIKE_PORT=str(self.port), LOOKALIKE_EMBEDDED_REDIS_PORT=str(self.redis_port),
                   LOOKALIKE_DATA_DIR=str(folder), LOOKALIKE_WEIGHTS=WEIGHTS, LOOKALIKE_SEED=str(SEED),
                   TF_CPP_MIN_LOG_LEVEL="2", **(extra_env or {}))
        # The repository on the path: where the project is not installed (bench/gpu.sh's machines) it runs as is.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = ChildProcess("make run", [sys.executable, "scripts/run_local.py"], env=env, cwd=REPO,
                                    log_path=folder / "stack.log", stop_timeout=120).start()
        try:
            self.ready = self.process.wait_until(lambda: ready_answer(self.url), "ready stack", timeout=ready_timeout,
                                                 interval=0.5)
        except BaseException:
            self.process.stop()
            raise
        self.store = Store.from_settings(Settings(redis_url=f"redis://127.0.0.1:{self.redis_port}/0"))

    def stop(self) -> None:
        """SIGTERM: make run stops its parts in order (SIGKILL for all of them if it has not in two minutes)."""
        self.process.stop()


def ready_answer(url: str) -> requests.Response | None:
    """The stack's answer to /readyz?workers=1 once it is 200, else None."""
    ready = requests.get(f"{url}/readyz?workers=1", timeout=2)
    return ready if ready.status_code == 200 else None


def wait_all(http: requests.Session, url: str, task_ids: list[str]) -> None:
    for task_id in task_ids:
        while True:
            task = http.get(f"{url}/v1/tasks/{task_id}", params={"wait": 30}).json()
            if task["state"] == "failed":
                raise RuntimeError(f"task failed: {task['error']}")
            if task["state"] == "succeeded":
                break


def index_through_api(url: str, count: int, mode: str, clients: int, bulk_size: int,
                      images: list[bytes] | None = None) -> float:
    """Images per second from the first submit until the last index task succeeded (``images``, in turn:
    the test photographs unless given)."""
    images = images or [path.read_bytes() for path in IMAGE_PATHS]
    collection = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    sessions = [requests.Session() for _ in range(clients)]
    endpoint = f"{url}/v1/collections/{collection}"
    if mode == "bulk":
        requests_to_send = [list(range(start, min(start + bulk_size, count))) for start in range(0, count, bulk_size)]
    else:
        requests_to_send = [[number] for number in range(count)]

    def send(position: int, numbers: list[int]) -> list[str]:
        http = sessions[position % clients]
        files = [("image", (f"{n}.jpg", images[n % len(images)])) for n in numbers]
        if mode == "bulk":
            response = http.post(f"{endpoint}/batches", files=files,
                                 data={"ids": json.dumps([f"img/{n}" for n in numbers])})
            response.raise_for_status()
            return [item["task_id"] for item in response.json()["tasks"]]
        response = http.post(f"{endpoint}/images", files=files, data={"id": f"img/{numbers[0]}"})
        response.raise_for_status()
        return [response.json()["task_id"]]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        task_lists = list(pool.map(send, range(len(requests_to_send)), requests_to_send))
        list(pool.map(lambda pair: wait_all(sessions[pair[0] % clients], url, pair[1]), enumerate(task_lists)))
    return count / (time.perf_counter() - started)


def fill_collection(stack: Stack, collection: str, size: int) -> None:
    """Store ``size`` random unit vectors as the worker would, with the worker's descriptor."""
    from shared.store import Descriptor

    worker = stack.ready.json()["workers"][0]
    descriptor = Descriptor(model=worker["model"], dimension=worker["dimension"], weights=worker["weights"])
    vectors = np.random.default_rng(0).standard_normal((size, descriptor.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for number, vector in enumerate(vectors):
        stack.store.save_image(collection, f"stored/{number}", vector, {"n": number}, descriptor)


def query_latencies(url: str, collection: str, count: int, images: list[bytes] | None = None) -> list[float]:
    """Seconds from submit to result of ``count`` single queries, one at a time."""
    images = images or [path.read_bytes() for path in IMAGE_PATHS]
    http = requests.Session()
    latencies = []
    for number in range(count + 2):
        started = time.perf_counter()
        response = http.post(f"{url}/v1/collections/{collection}/queries",
                             files={"image": ("q.jpg", images[number % len(images)])}, data={"k": "10"})
        wait_all(http, url, [response.json()["task_id"]])
        if number >= 2:  # the first two warm up the query path
            latencies.append(time.perf_counter() - started)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    return float(np.percentile(values, 100 * fraction))


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike throughput benchmark")
    parser.add_argument("--images", type=int, default=200, help="images per end-to-end run")
    parser.add_argument("--writeup-images", type=int, default=10, help="images for the write-up's approach")
    parser.add_argument("--stored-vectors", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bulk-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    limit = measure_limit(max(5, args.repeats), [1, 2, 4, 8, 16, 32])
    writeup = measure_writeup(limit.pop("model"), args.writeup_images)

    with tempfile.TemporaryDirectory() as folder:
        stack = Stack(Path(folder))
        try:
            settings = {key: stack.ready.json()["workers"][0][key]
                        for key in ("weights", "max_batch", "mixed_precision")}
            end_to_end = {
                mode: statistics.median(index_through_api(stack.url, args.images, mode, args.clients, args.bulk_size)
                                        for _ in range(args.repeats))
                for mode in ("bulk", "single")
            }
            collection = f"bench-query-{uuid.uuid4().hex[:8]}"
            fill_collection(stack, collection, args.stored_vectors)
            runs = [query_latencies(stack.url, collection, args.queries) for _ in range(args.repeats)]
        finally:
            stack.stop()

    p50 = 1000 * statistics.median(percentile(run, 0.50) for run in runs)
    p95 = 1000 * statistics.median(percentile(run, 0.95) for run in runs)
    best_e2e = max(end_to_end.values())
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "settings": settings | {"images": args.images, "clients": args.clients, "bulk_size": args.bulk_size,
                                "repeats": args.repeats},
        "limit_images_per_second": round(limit["images_per_second"], 2),
        "limit_best_batch": limit["best_batch"],
        "limit_by_batch": {size: round(rate, 2) for size, rate in limit["by_batch"].items()},
        "writeup_images_per_second": round(writeup["images_per_second"], 3),
        "lookalike_bulk_images_per_second": round(end_to_end["bulk"], 2),
        "lookalike_single_images_per_second": round(end_to_end["single"], 2),
        "ratio_lookalike_to_limit": round(best_e2e / limit["images_per_second"], 3),
        "ratio_lookalike_to_writeup": round(best_e2e / writeup["images_per_second"], 1),
        "stored_vectors": args.stored_vectors,
        "query_p50_ms": round(p50, 1),
        "query_p95_ms": round(p95, 1),
        "single_image_forward_ms": round(limit["single_image_forward_ms"], 1),
        "query_p50_minus_forward_ms": round(p50 - limit["single_image_forward_ms"], 1),
    }
    figures["goals"] = {
        "end_to_end >= 0.8 x limit": figures["ratio_lookalike_to_limit"] >= 0.8,
        "end_to_end >= 3 x write-up": figures["ratio_lookalike_to_writeup"] >= 3,
        "query p50 <= forward + 50 ms": figures["query_p50_minus_forward_ms"] <= 50,
    }
    report(figures, args.json)


def report(figures: dict, as_json: bool) -> None:
    """Print a benchmark's figures as JSON or as an aligned table."""
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

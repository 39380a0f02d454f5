"""What an indexed image costs the host besides the model (issue 17, part 1: the pipeline's own ceiling).

    .venv/bin/python bench/pipeline.py [--json] [--repeats 5]

On a GPU the forward pass gets 100-200x faster and the rest of the path becomes the limit. This
measures, per image, on the same photographs at the sizes phones upload (JPEG, quality 90, about 1,
2 and 4 megapixels; made here from scikit-image's bundled photographs, so nothing is downloaded):

1. the floor: decoding the JPEG at full size and resizing it to 224x224 in a tight loop (OpenCV);
2. the worker's own stages, each timed alone as the index task runs them (worker/tasks.py
   ``index_image``): decode (the service's ``decode_image``, which lets the JPEG decoder scale down),
   preprocess for VGG16 (``FeatureExtractor.prepare``: pad to 224, ImageNet means), the PDQ hash,
   the thumbnail, and the Redis write of vector, hash, thumbnail and change event (an embedded Redis);
3. the ratio of their sum to the floor -- the issue's goal is the whole path at most 2x the floor;
4. the whole path: the 2-megapixel images indexed through the HTTP API of a stack started here (embedded
   Redis, gunicorn, and the worker with its forward pass replaced by a stand-in that costs nothing --
   bench/stand_in_worker.py, bench-only), single requests from --clients threads and bulk requests of
   --bulk-size: images/s, and the CPU milliseconds per image each process paid (API, worker, Redis, and
   this client), read from the kernel's counters before and after; then the same with Celery's task events
   off (LOOKALIKE_TASK_EVENTS=false: four pub/sub messages per task fewer), and with PDQ hashed in two
   processes of the worker's (LOOKALIKE_HASH_PROCESSES=2);
5. PDQ hashes/s of the 2 MP images hashed by two threads at once, in the threads and through two hashing
   processes: pdqhash holds Python's interpreter lock, so threads alone get no faster than one.

CPU milliseconds per image (``time.process_time`` for the stages: what the host's cores pay, the figure
that says how many cores feed a GPU), medians of --repeats passes over the images.
"""

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.throughput import report, wait_all  # noqa: E402
from shared.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from shared.images import decode_image, make_thumbnail  # noqa: E402
from shared.processes import ChildProcess, stop_all  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Descriptor, Store  # noqa: E402
from worker.pdq import compute_pdq  # noqa: E402

MEGAPIXELS = (1, 2, 4)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
INPUT_SIZE = 224


def phone_jpegs(megapixels: float) -> list[bytes]:
    """The bundled photographs at about ``megapixels`` (4:3 where they are not), JPEG quality 90."""
    from skimage import data

    encoded = []
    for name in PHOTOS:
        pixels = cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR)
        height, width = pixels.shape[:2]
        scale = (megapixels * 1e6 / (width * height)) ** 0.5
        resized = cv2.resize(pixels, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)
        encoded.append(cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return encoded


def cpu_ms_per_image(action, items: list, repeats: int) -> float:
    """Median over ``repeats`` passes of the CPU time one item costs ``action``, in milliseconds."""
    passes = []
    for _ in range(repeats):
        started = time.process_time()
        for item in items:
            action(item)
        passes.append((time.process_time() - started) / len(items))
    return round(1000 * statistics.median(passes), 3)


def decode_with_area_shrink(jpeg: bytes) -> np.ndarray:
    """decode_image as it was: the decoder's own scaling, then an area-interpolated shrink to 512 px."""
    from PIL import Image

    from shared.images import DECODED_MAX_SIDE, _JPEG_REDUCED

    with Image.open(io.BytesIO(jpeg)) as header:  # the header only, as decode_image reads it
        side = max(header.size)
    reduction = next((factor for factor in _JPEG_REDUCED if side >= factor * DECODED_MAX_SIDE), 1)
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), _JPEG_REDUCED.get(reduction, cv2.IMREAD_COLOR))
    scale = DECODED_MAX_SIDE / max(pixels.shape[:2])
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


def floor(jpeg: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(pixels, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)


def cpu_seconds(pid: int) -> float:
    """CPU time a process and its children (gunicorn's workers) have used so far."""
    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def index_once(url: str, jpegs: list[bytes], count: int, clients: int, bulk_size: int, mode: str,
               processes: dict[str, int]) -> tuple[float, dict[str, float]]:
    """``count`` images indexed into a new collection by single or bulk requests from ``clients`` threads: images/s
    from the first submit until every task succeeded, and CPU ms per image each process paid meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    endpoint = f"{url}/v1/collections/pipeline-{mode}-{uuid.uuid4().hex[:8]}"
    sessions = [requests.Session() for _ in range(clients)]
    groups = ([[n] for n in range(count)] if mode == "single"
              else [list(range(start, min(start + bulk_size, count))) for start in range(0, count, bulk_size)])

    def send(position: int, numbers: list[int]) -> list[str]:
        http = sessions[position % clients]
        files = [("image", (f"{n}.jpg", jpegs[n % len(jpegs)])) for n in numbers]
        if mode == "bulk":
            answer = http.post(f"{endpoint}/batches", files=files, timeout=120)
            answer.raise_for_status()
            return [item["task_id"] for item in answer.json()["tasks"]]
        answer = http.post(f"{endpoint}/images", files=files, timeout=120)
        answer.raise_for_status()
        return [answer.json()["task_id"]]

    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        task_lists = list(pool.map(send, range(len(groups)), groups))
        list(pool.map(lambda pair: wait_all(sessions[pair[0] % clients], url, pair[1]), enumerate(task_lists)))
    seconds = time.perf_counter() - started
    spent = {name: 1000 * (cpu_seconds(pid) - before[name]) / count for name, pid in processes.items()}
    return count / seconds, spent


def pdq_by_two_threads(decoded: list[np.ndarray], repeats: int) -> dict:
    """Hashes/s when two task threads hash at once: in the threads (pdqhash holds the interpreter lock: no
    faster than one thread) and through two hashing processes (worker.pdq.HashProcesses), medians of ``repeats``
    passes of 8 rounds over the images. On more cores the second figure keeps growing; the first cannot."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.pdq import HashProcesses

    work = decoded * 8
    figures = {}
    for label, processes in (("one_thread", None), ("two_threads", 0), ("two_threads_two_processes", 2)):
        hashes = HashProcesses(processes or 0)
        try:
            hashes.start(decoded[0])()  # (starts the processes)
            rates = []
            for _ in range(repeats):
                started = time.perf_counter()
                if processes is None:
                    for pixels in work:
                        hashes.start(pixels)()
                else:
                    with ThreadPoolExecutor(2) as pool:
                        list(pool.map(lambda pixels, hashes=hashes: hashes.start(pixels)(), work))
                rates.append(len(work) / (time.perf_counter() - started))
            figures[label] = round(statistics.median(rates), 1)
        finally:
            hashes.shutdown()
    return figures


def through_the_stack(folder: Path, jpegs: list[bytes], count: int, clients: int, bulk_size: int,
                      repeats: int, extra_env: dict[str, str] | None = None) -> dict:
    """Index ``count`` images through the HTTP API of a stack whose worker's model is a stand-in: images/s and
    CPU ms per image by process, for single and for bulk requests (medians of ``repeats`` runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(folder / "stack-redis", free_port()).start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_REDIS_URL=redis.url, LOOKALIKE_WEIGHTS="random", LOOKALIKE_SEED="0", LOOKALIKE_AUTH="false",
               LOOKALIKE_RATE_LIMIT="", LOOKALIKE_HOST="127.0.0.1", LOOKALIKE_PORT=str(port),
               LOOKALIKE_WORKER_METRICS_PORT="0", TF_CPP_MIN_LOG_LEVEL="2", **(extra_env or {}))
    api = ChildProcess("api", [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf",
                               "api.wsgi:app"], env=env, cwd=REPO, log_path=folder / "api.log")
    worker = ChildProcess("stand-in worker", [sys.executable, "bench/stand_in_worker.py"], env=env, cwd=REPO,
                          log_path=folder / "worker.log")
    try:
        api.start()
        worker.start()
        worker.wait_until(lambda: requests.get(f"{url}/readyz?workers=1", timeout=5).status_code == 200,
                          "a ready stack", timeout=300)
        processes = {"api": api.process.pid, "worker": worker.process.pid, "redis": redis.process.pid,
                     "client": os.getpid()}
        results = {}
        for mode in ("single", "bulk"):
            runs = [index_once(url, jpegs, count, clients, bulk_size, mode, processes) for _ in range(repeats)]
            spent = {name: round(statistics.median(run[1][name] for run in runs), 2) for name in processes}
            results[mode] = {"images_per_second": round(statistics.median(run[0] for run in runs), 1),
                             "cpu_ms_per_image": spent,
                             # what the service's processes paid (the client, this process, is the caller's)
                             "service_cpu_ms_per_image": round(spent["api"] + spent["worker"] + spent["redis"], 2)}
        return results
    finally:
        stop_all([api, worker])
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=96, help="images through the stack per mode")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bulk-size", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    cv2.setNumThreads(1)  # one image per core, as the worker's task threads decode

    from worker.extractor import FeatureExtractor
    from worker.weights import resolve_weights

    settings = Settings(weights="random", seed=0)
    extractor = FeatureExtractor(resolve_weights(settings.weights, settings.seed), settings.seed,
                                 pooling=settings.pooling, input_mode=settings.input_mode, scales=settings.scales)
    descriptor = Descriptor(extractor.descriptor.model, extractor.descriptor.dimension, extractor.descriptor.weights)
    vector = np.ones(descriptor.dimension, np.float32) / np.sqrt(descriptor.dimension)

    with tempfile.TemporaryDirectory() as folder:
        redis = EmbeddedRedis(Path(folder) / "redis", free_port()).start()
        try:
            store = Store.from_settings(Settings(redis_url=redis.url))
            collection = f"pipeline-{uuid.uuid4().hex[:8]}"
            sizes = {}
            for megapixels in MEGAPIXELS:
                jpegs = phone_jpegs(megapixels)
                decoded = [decode_image(jpeg) for jpeg in jpegs]
                pdqs = [compute_pdq(pixels).encode() for pixels in decoded]
                thumbnails = [make_thumbnail(pixels, settings.thumbnail_size) for pixels in decoded]
                writes = list(zip(pdqs, thumbnails))
                stages = {
                    "decode": cpu_ms_per_image(decode_image, jpegs, args.repeats),
                    # what decode_image cost before issue 17: area interpolation for the shrink at any scale
                    "decode_area_shrink_before": cpu_ms_per_image(decode_with_area_shrink, jpegs, args.repeats),
                    "preprocess": cpu_ms_per_image(extractor.prepare, decoded, args.repeats),
                    "pdq": cpu_ms_per_image(compute_pdq, decoded, args.repeats),
                    "thumbnail": cpu_ms_per_image(lambda pixels: make_thumbnail(pixels, settings.thumbnail_size),
                                                  decoded, args.repeats),
                    "redis_write": cpu_ms_per_image(
                        lambda write: store.save_image(collection, uuid.uuid4().hex, vector, {}, descriptor, *write),
                        writes, args.repeats),
                }
                bare = cpu_ms_per_image(floor, jpegs, args.repeats)
                if megapixels == 2:
                    pdq_parallel = pdq_by_two_threads(decoded, args.repeats)
                total = round(sum(ms for stage, ms in stages.items() if not stage.endswith("_before")), 3)
                sizes[f"{megapixels}MP"] = {
                    "jpeg_kb": round(statistics.median(len(jpeg) for jpeg in jpegs) / 1024, 1),
                    "floor_decode_resize_ms": bare, "stages_ms": stages, "worker_stages_total_ms": total,
                    "over_floor": round(total / bare, 2)}
        finally:
            redis.stop()
        # The stack as deployed (Celery's task events on, for Flower), then without them, side by side.
        stacks = {variant: through_the_stack(Path(folder) / variant, phone_jpegs(2), args.images, args.clients,
                                             args.bulk_size, args.repeats, events)
                  for variant, events in (("stack_2mp_stand_in_model", {}),
                                          ("stack_2mp_stand_in_model_without_task_events",
                                           {"LOOKALIKE_TASK_EVENTS": "false"}),
                                          ("stack_2mp_stand_in_model_two_hash_processes",
                                           {"LOOKALIKE_HASH_PROCESSES": "2"}))}
        floor_2mp = sizes["2MP"]["floor_decode_resize_ms"]
        for stack in stacks.values():
            for mode in stack.values():
                mode["service_over_floor_2mp"] = round(mode["service_cpu_ms_per_image"] / floor_2mp, 2)

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "what": "CPU ms per image (time.process_time), median of --repeats passes; one OpenCV thread",
        "images_per_size": len(PHOTOS), "sizes": sizes, "pdq_hashes_per_second_2mp": pdq_parallel, **stacks,
        "seconds": round(time.monotonic() - started, 1),
    }
    report(figures, args.json)


if __name__ == "__main__":
    main()

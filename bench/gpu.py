"""The GPU check (issue 17, part 3): the model's bare forward rate and the whole service on one accelerator.

    bash bench/gpu.sh            # on a GPU machine: installs what it lacks, then runs this
    python bench/gpu.py --out gpu.json [--small] [--budget-seconds 420]

Runs on whichever Keras backend ``KERAS_BACKEND`` names (the GPU machines have JAX and PyTorch, not
TensorFlow), with seeded random weights (speed does not depend on their values), and writes its
figures as JSON after every phase, so a run cut short still reports what it measured:

1. forward: bare VGG16 forward passes (the worker's own compiled call, worker.keras_backend) by batch
   size and precision (float32, mixed float16) -- images/s, median of --repeats timed passes after a
   warm-up pass that compiles the shape. Run in a child process, so its GPU memory is free again for
2. end to end: the stack `make run` starts (embedded Redis, one worker, gunicorn) with the worker's
   batcher at the best batch and precision of 1, the test photographs enlarged to phone size (JPEG,
   --megapixels): images/s through the HTTP API in bulk and single requests, from the first submit to
   the last task's success; then the latency of single queries, submit to result, on the idle stack;
3. worker settings: bulk images/s of the stack with PDQ in 4 hashing processes (LOOKALIKE_HASH_PROCESSES), then
   with other LOOKALIKE_MAX_BATCH / LOOKALIKE_BATCH_WAIT_MS (the measurement behind their defaults on a GPU),
   while the budget lasts.

Goals (issue 17): end to end >= 0.9 x the bare forward rate at the best batch; query p50 <= the forward
time of one image + 10 ms. On a CPU (``--small``, tests/test_gpu_check.py) the same code runs with tiny
sizes; its figures say nothing about a GPU.
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISIONS = ("float32", "mixed_float16")
GPU_BATCHES = (1, 8, 32, 64, 128, 256)
SMALL_BATCHES = (1, 2)
WEIGHTS, SEED = "random", 0


def photographs(megapixels: float) -> list[bytes]:
    """The test photographs enlarged to about ``megapixels`` (JPEG quality 90), as phones upload them."""
    import cv2
    import numpy as np

    encoded = []
    for path in sorted((REPO / "tests" / "data").glob("*.jpg")):
        pixels = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        scale = (megapixels * 1e6 / (pixels.shape[0] * pixels.shape[1])) ** 0.5
        size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
        encoded.append(cv2.imencode(".jpg", cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC),
                                    [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return encoded


def machine() -> dict:
    """Where this ran: host, Python, backend and the accelerators the backend sees."""
    import keras

    from worker.keras_backend import accelerators, backend

    name = backend()
    return {"host": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(), "keras": keras.__version__, "backend": name,
            "backend_version": __import__(name).__version__, "accelerators": accelerators()}


# --- 1. bare forward passes (a child process) -------------------------------------------------------------


def forward_rates(batches: tuple[int, ...], repeats: int, deadline: float) -> dict:
    """images/s by precision and batch size; milliseconds of a batch of one by precision."""
    import numpy as np

    from shared.images import decode_image
    from worker.extractor import FeatureExtractor
    from worker.weights import resolve_weights

    photo = decode_image(next((REPO / "tests" / "data").glob("*.jpg")).read_bytes())
    figures: dict = {"machine": machine(), "images_per_second": {}, "single_image_ms": {}}
    for precision in PRECISIONS:
        extractor = FeatureExtractor(resolve_weights(WEIGHTS, SEED), seed=SEED,
                                     mixed_precision=precision != "float32")
        one = extractor.preprocess(photo)
        rates = figures["images_per_second"][precision] = {}
        for size in batches:
            if seconds_left(deadline) < 0:
                figures["cut_short"] = f"no time left for {precision} batch {size}"
                return figures
            batch = np.repeat(one[None], size, axis=0)
            extractor.feature_maps(batch)  # compiles this shape (and picks its kernels)
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                extractor.feature_maps(batch)  # returns host memory: the device has finished
                timings.append(time.perf_counter() - started)
            seconds = statistics.median(timings)
            rates[str(size)] = round(size / seconds, 2)
            if size == 1:
                figures["single_image_ms"][precision] = round(1000 * seconds, 2)
    return figures


def best_of(rates: dict) -> tuple[str, int, float]:
    """The (precision, batch, images/s) of the highest forward rate."""
    return max(((precision, int(size), rate) for precision, by_batch in rates.items()
                for size, rate in by_batch.items()), key=lambda best: best[2])


# --- 2. the whole service ----------------------------------------------------------------------------------


def worker_env(precision: str, batch: int, wait_ms: float, small: bool = False,
               hash_processes: int = 0) -> dict[str, str]:
    """The worker's batcher, precision and PDQ hashing processes, threads enough for two full batches in flight,
    and API processes enough that the API is not what the run measures (half the host's cores; gunicorn's
    default is 2)."""
    return {"LOOKALIKE_MAX_BATCH": str(batch), "LOOKALIKE_WORKER_THREADS": str(max(32, 2 * batch)),
            "LOOKALIKE_MIXED_PRECISION": "1" if precision != "float32" else "0",
            "LOOKALIKE_BATCH_WAIT_MS": str(wait_ms), "LOOKALIKE_HASH_PROCESSES": str(hash_processes),
            "WEB_CONCURRENCY": "2" if small else str(max(2, (os.cpu_count() or 2) // 2))}


def seconds_left(deadline: float) -> float:
    return deadline - time.time()


def end_to_end(precision: str, batch: int, args, deadline: float) -> dict:
    from bench.throughput import Stack, fill_collection, index_through_api, percentile, query_latencies

    images = photographs(args.megapixels)
    env = worker_env(precision, batch, args.batch_wait_ms, args.small)
    figures: dict = {"worker_settings": env | {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")},
                     "megapixels": args.megapixels, "images": args.images}
    with tempfile.TemporaryDirectory() as folder:
        stack = Stack(Path(folder), env, ready_timeout=max(60.0, seconds_left(deadline)))
        try:
            worker = stack.ready.json()["workers"][0]
            figures["worker"] = {key: worker.get(key) for key in ("backend", "max_batch", "mixed_precision")}
            for mode, clients in (("bulk", args.clients), ("single", args.clients)):
                runs = []
                for _ in range(args.repeats):
                    if seconds_left(deadline) < 0:
                        break
                    runs.append(index_through_api(stack.url, args.images, mode, clients, args.bulk_size, images))
                if runs:
                    figures[f"{mode}_images_per_second"] = round(statistics.median(runs), 2)
            if seconds_left(deadline) > 0:
                collection = f"gpu-query-{uuid.uuid4().hex[:8]}"
                fill_collection(stack, collection, args.stored_vectors)
                latencies = query_latencies(stack.url, collection, args.queries, images)
                figures["query_p50_ms"] = round(1000 * percentile(latencies, 0.5), 2)
                figures["query_p95_ms"] = round(1000 * percentile(latencies, 0.95), 2)
        finally:
            stack.stop()
    return figures


def batcher_settings(precision: str, best_batch: int, args, deadline: float, figures: list, write) -> None:
    """Bulk images/s of the stack with other batcher settings (the measurement behind the GPU defaults of
    LOOKALIKE_MAX_BATCH and LOOKALIKE_BATCH_WAIT_MS), one run each, appended to ``figures`` and written as
    each is measured, as long as the budget lasts (a stack takes up to a minute to start and stop)."""
    from bench.throughput import Stack, index_through_api

    images = photographs(args.megapixels)
    # (max batch, wait ms, PDQ hashing processes): the hashing processes take pdqhash off the worker's interpreter
    # lock, the limit of one worker process on a host with cores to spare (docs/benchmarks.md).
    candidates = ([(1, 5.0, 0)] if args.small else
                  [(best_batch, args.batch_wait_ms, 4), (32, 5.0, 0), (best_batch, 2.0, 0), (best_batch, 20.0, 0),
                   (64, 5.0, 0)])
    for batch, wait_ms, hash_processes in dict.fromkeys(candidates):
        if (batch, wait_ms, hash_processes) == (best_batch, args.batch_wait_ms, 0) or \
                seconds_left(deadline) < (0 if args.small else 60):
            continue
        with tempfile.TemporaryDirectory() as folder:
            stack = Stack(Path(folder), worker_env(precision, batch, wait_ms, args.small, hash_processes),
                          ready_timeout=max(60.0, seconds_left(deadline)))
            try:
                rate = index_through_api(stack.url, args.images, "bulk", args.clients, args.bulk_size, images)
            finally:
                stack.stop()
        figures.append({"max_batch": batch, "batch_wait_ms": wait_ms, "hash_processes": hash_processes,
                        "bulk_images_per_second": round(rate, 2)})
        write()


def goals(report: dict) -> dict:
    forward, service = report.get("forward", {}), report.get("end_to_end", {})
    precision, batch, rate = best_of(forward["images_per_second"])
    achieved = max(service.get("bulk_images_per_second", 0), service.get("single_images_per_second", 0))
    single_ms = forward["single_image_ms"].get(precision)
    judged = {"best_forward": {"precision": precision, "batch": batch, "images_per_second": rate},
              "end_to_end_over_forward": round(achieved / rate, 3),
              "end_to_end >= 0.9 x forward at the best batch": achieved >= 0.9 * rate}
    if "query_p50_ms" in service and single_ms is not None:
        judged["query_p50_minus_forward_ms"] = round(service["query_p50_ms"] - single_ms, 2)
        judged["query p50 <= forward + 10 ms"] = service["query_p50_ms"] <= single_ms + 10
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike on a GPU: bare forward rate and the whole service")
    parser.add_argument("--out", type=Path, required=True, help="the JSON report, rewritten after every phase")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU smoke run of the same code")
    parser.add_argument("--budget-seconds", type=float, default=360,
                        help="stop starting work this long after bench/gpu.sh started (LOOKALIKE_GPU_CHECK_STARTED)")
    parser.add_argument("--phase", choices=("forward",), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--images", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--megapixels", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--bulk-size", type=int, default=64)
    parser.add_argument("--stored-vectors", type=int, default=10_000)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    small = args.small
    args.repeats = args.repeats or (1 if small else 5)
    args.images = args.images or (4 if small else 2000)
    args.queries = args.queries or (3 if small else 50)
    if small:
        args.clients, args.bulk_size, args.stored_vectors, args.megapixels = 2, 2, 100, min(args.megapixels, 0.5)
    started = float(os.environ.get("LOOKALIKE_GPU_CHECK_STARTED") or time.time())
    os.environ["LOOKALIKE_GPU_CHECK_STARTED"] = str(started)  # (the forward phase's process counts from it too)
    deadline = started + args.budget_seconds
    # SIGTERM (a caller's timeout) unwinds like an error: every stack started here is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))

    if args.phase == "forward":
        print(json.dumps(forward_rates(SMALL_BATCHES if small else GPU_BATCHES, args.repeats, deadline)))
        return

    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "small": small}

    def write() -> None:
        args.out.write_text(json.dumps(report, indent=2))

    # The forward phase gets half of what is left (its own deadline stops it starting more batch sizes).
    forward_budget = seconds_left(deadline) / 2
    try:
        child = subprocess.run([sys.executable, __file__, "--phase", "forward", "--out", str(args.out),
                                "--budget-seconds", str(time.time() + forward_budget - started),
                                "--repeats", str(args.repeats)] + (["--small"] if small else []),
                               capture_output=True, text=True, timeout=forward_budget + 120, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        report["forward_error"] = f"no answer in {exc.timeout:.0f} s"
        write()
        sys.exit(f"the forward phase gave no answer in {exc.timeout:.0f} s")
    if child.returncode != 0:
        report["forward_error"] = child.stderr[-4000:]
        write()
        sys.exit(f"the forward phase failed:\n{child.stderr[-4000:]}")
    report["forward"] = json.loads(child.stdout.strip().splitlines()[-1])
    write()
    precision, batch, _ = best_of(report["forward"]["images_per_second"])
    failed = False
    try:
        report["end_to_end"] = end_to_end(precision, batch, args, deadline)
        report["goals"] = goals(report)
        write()
        report["batcher_settings"] = []
        batcher_settings(precision, batch, args, deadline, report["batcher_settings"], write)
    except Exception as exc:  # noqa: BLE001 - whatever stopped a phase, the figures so far and why go in the report
        report["error"] = f"{type(exc).__name__}: {exc}"[-4000:]
        failed = True
    write()
    print(json.dumps(report, indent=2))
    if failed:
        sys.exit(f"stopped: {report['error']}")


if __name__ == "__main__":
    main()

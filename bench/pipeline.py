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
3. the ratio of their sum to the floor -- the issue's goal is the whole path at most 2x the floor.

CPU milliseconds per image (``time.process_time``: what the host's cores pay, the figure that says how
many cores feed a GPU), medians of --repeats passes over the images. The HTTP path, the broker and the
task bookkeeping are not in this bench yet (they need the stack with a stand-in for the model).
"""

import argparse
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.throughput import report  # noqa: E402
from shared.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from shared.images import decode_image, make_thumbnail  # noqa: E402
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


def floor(jpeg: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(pixels, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
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
                    "preprocess": cpu_ms_per_image(extractor.prepare, decoded, args.repeats),
                    "pdq": cpu_ms_per_image(compute_pdq, decoded, args.repeats),
                    "thumbnail": cpu_ms_per_image(lambda pixels: make_thumbnail(pixels, settings.thumbnail_size),
                                                  decoded, args.repeats),
                    "redis_write": cpu_ms_per_image(
                        lambda write: store.save_image(collection, uuid.uuid4().hex, vector, {}, descriptor, *write),
                        writes, args.repeats),
                }
                bare = cpu_ms_per_image(floor, jpegs, args.repeats)
                total = round(sum(stages.values()), 3)
                sizes[f"{megapixels}MP"] = {
                    "jpeg_kb": round(statistics.median(len(jpeg) for jpeg in jpegs) / 1024, 1),
                    "floor_decode_resize_ms": bare, "stages_ms": stages, "worker_stages_total_ms": total,
                    "over_floor": round(total / bare, 2)}
        finally:
            redis.stop()

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "what": "CPU ms per image (time.process_time), median of --repeats passes; one OpenCV thread",
        "images_per_size": len(PHOTOS), "sizes": sizes,
        "seconds": round(time.monotonic() - started, 1),
    }
    report(figures, args.json)


if __name__ == "__main__":
    main()

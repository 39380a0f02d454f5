"""Dynamic batching: images in flight in one worker share forward passes, as in TF Serving and Triton.

Task threads decode and preprocess in parallel (OpenCV and NumPy release the GIL), then
hand their input to :class:`DynamicBatcher` and wait. One model thread takes the first
waiting input, gathers whatever else arrives within ``wait_seconds`` of its arrival (at
most ``max_batch``) and runs one forward pass. Each caller gets its own row back, or the
exception the pass raised.

The model only ever sees a few fixed batch sizes (powers of two and ``max_batch``), so
compiled kernels are reused. A gathered batch is cut down to the largest fixed size that
fits, rather than padded up: on a CPU a padding row costs as much as a real one. The cut
inputs go first into the next pass, which starts at once.
"""

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from worker import metrics

log = logging.getLogger(__name__)

# Lower runs first: a query waits for at most the batch already running, never behind an import.
QUERY_PRIORITY, INDEX_PRIORITY = 0, 1


def fixed_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself: the shapes the model ever sees."""
    sizes = [1 << power for power in range(max_batch.bit_length()) if 1 << power < max_batch]
    return sizes + [max_batch]


class DynamicBatcher:
    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch: int, wait_seconds: float):
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self.sizes = fixed_sizes(max_batch)
        self._inbox: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO among equal priorities; never compares arrays
        self._stats_lock = threading.Lock()
        self._batch_sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._serve, name="lookalike-model", daemon=True)
        self._thread.start()

    def submit(self, model_input: np.ndarray, priority: int = INDEX_PRIORITY) -> Future:
        result: Future = Future()
        self._inbox.put((priority, next(self._order), time.monotonic(), model_input, result))
        return result

    def run_all(self, model_inputs: list[np.ndarray], priority: int = INDEX_PRIORITY) -> np.ndarray:
        """Submit several inputs and wait for all their rows (they may share or span passes)."""
        results = [self.submit(model_input, priority) for model_input in model_inputs]
        return np.stack([result.result() for result in results])

    def batch_sizes(self) -> dict[int, int]:
        """How many forward passes ran with each number of real (unpadded) inputs."""
        with self._stats_lock:
            return dict(sorted(self._batch_sizes.items()))

    def _serve(self) -> None:
        while True:
            batch = [self._inbox.get()]
            deadline = batch[0][2] + self.wait_seconds  # a carried-over input does not wait twice
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            size = max(size for size in self.sizes if size <= len(batch))
            for carried in batch[size:]:  # keeps its priority and place in line
                self._inbox.put(carried)
            self._run(batch[:size])

    def _run(self, batch: list) -> None:
        inputs = np.stack([item[3] for item in batch])
        started = time.perf_counter()
        try:
            outputs = self._run_batch(inputs)
        except Exception as exc:  # every caller in the pass learns why; the model thread goes on
            log.exception("forward pass of %d inputs failed", len(batch))
            for *_, result in batch:
                result.set_exception(exc)
            return
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.IMAGES.inc(len(batch))
        with self._stats_lock:
            self._batch_sizes[len(batch)] += 1
        for row, (*_, result) in enumerate(batch):
            result.set_result(outputs[row])

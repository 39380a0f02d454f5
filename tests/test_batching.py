"""Dynamic batching: concurrent images share forward passes, each keeping its own outcome.

Which inputs share a pass depends on what is waiting when the model thread looks, so the
tests hold the model thread in a pass (a gated model) while they queue inputs, instead of
sleeping and hoping the machine kept up: the outcome is the same on a busy machine."""

import socket
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from shared import keys
from worker.batcher import INDEX_PRIORITY, QUERY_PRIORITY, DynamicBatcher, fixed_sizes

EVENT_TIMEOUT = 30  # seconds; only ever reached when something is broken


class RecordingModel:
    """A stand-in forward pass (pure NumPy) that records the shapes it was given.

    ``gated``: its first pass holds the model thread until :meth:`release` (``entered`` is
    set once it does), so that whatever is submitted meanwhile is all waiting at once.
    """

    def __init__(self, delay: float = 0.0, fail_when=lambda batch: False, gated: bool = False):
        self.shapes: list[int] = []
        self.first_rows: list[float] = []
        self.delay = delay
        self.fail_when = fail_when
        self.entered = threading.Event()
        self._gate = threading.Event()
        if not gated:
            self._gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape[0])
        self.first_rows.append(float(batch[0, 0]))
        self.entered.set()
        assert self._gate.wait(EVENT_TIMEOUT), "the test never released the model"
        time.sleep(self.delay)
        if self.fail_when(batch):
            raise RuntimeError("forward pass failed")
        return batch * 2

    def release(self) -> None:
        self._gate.set()


def occupy(batcher: DynamicBatcher, model: RecordingModel, width: int) -> Future:
    """Start a pass of one blocker input (-1) and return once the model thread is inside it."""
    blocker = batcher.submit(np.full(width, -1, np.float32))
    assert model.entered.wait(EVENT_TIMEOUT), "the model thread never started the blocker's pass"
    return blocker


def test_fixed_sizes():
    assert fixed_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert fixed_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert fixed_sizes(1) == [1]


def test_waiting_inputs_share_passes_of_fixed_sizes_and_get_their_own_rows():
    model = RecordingModel(gated=True)
    batcher = DynamicBatcher(model, max_batch=8, wait_seconds=0.2)
    blocker = occupy(batcher, model, 3)
    results = [batcher.submit(np.full(3, value, np.float32)) for value in range(7)]  # all wait for the model
    model.release()
    rows = [result.result(timeout=EVENT_TIMEOUT) for result in results]
    np.testing.assert_array_equal(blocker.result(timeout=EVENT_TIMEOUT), [-2, -2, -2])
    for value, row in enumerate(rows):
        np.testing.assert_array_equal(row, np.full(3, 2 * value))
    # Seven waiting inputs run as the fixed sizes 4 + 2 + 1, in arrival order, unpadded.
    assert model.shapes == [1, 4, 2, 1]
    assert model.first_rows == [-1, 0, 4, 6]
    assert batcher.batch_sizes() == {1: 2, 2: 1, 4: 1}


def test_inputs_arriving_within_the_window_share_a_pass_that_starts_once_full():
    # A window far longer than any test: the pass can only run early because it is full.
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch=8, wait_seconds=600)
    results = [batcher.submit(np.zeros(2, np.float32))]
    deadline = time.monotonic() + EVENT_TIMEOUT
    while batcher._inbox.qsize():  # taken by the model thread, which now gathers company for it
        assert time.monotonic() < deadline, "the model thread never took the first input"
        time.sleep(0.01)
    results += [batcher.submit(np.full(2, value, np.float32)) for value in range(1, 8)]  # all after the first was taken
    rows = [result.result(timeout=EVENT_TIMEOUT) for result in results]
    assert [row[0] for row in rows] == [2.0 * value for value in range(8)]
    assert model.shapes == [8]


def test_a_pass_never_exceeds_max_batch():
    model = RecordingModel(gated=True)
    batcher = DynamicBatcher(model, max_batch=4, wait_seconds=0.2)
    occupy(batcher, model, 2)
    results = [batcher.submit(np.full(2, value, np.float32)) for value in range(10)]
    model.release()
    rows = np.stack([result.result(timeout=EVENT_TIMEOUT) for result in results])
    assert rows[:, 0].tolist() == [2.0 * value for value in range(10)]
    assert model.shapes == [1, 4, 4, 2]
    assert batcher.batch_sizes() == {1: 1, 2: 1, 4: 2}
    # run_all: several inputs of one caller, rows back in order
    np.testing.assert_array_equal(batcher.run_all([np.full(2, 5, np.float32), np.full(2, 6, np.float32)]),
                                  [[10, 10], [12, 12]])


def test_a_lone_input_waits_only_the_batch_window():
    # Far from full (1 of 32): it runs once its window has passed, not when more inputs come.
    batcher = DynamicBatcher(RecordingModel(), max_batch=32, wait_seconds=0.5)
    started = time.monotonic()
    batcher.submit(np.zeros(2, np.float32)).result(timeout=EVENT_TIMEOUT)
    assert time.monotonic() - started >= 0.5  # it did wait for company
    assert batcher.batch_sizes() == {1: 1}


def test_a_failed_pass_fails_its_callers_and_the_next_pass_runs():
    model = RecordingModel(fail_when=lambda batch: (batch == 666).any(), gated=True)
    batcher = DynamicBatcher(model, max_batch=4, wait_seconds=0.1)
    occupy(batcher, model, 2)
    doomed = [batcher.submit(np.full(2, value, np.float32)) for value in (1, 666)]  # one pass, after the blocker
    model.release()
    for result in doomed:
        with pytest.raises(RuntimeError, match="forward pass failed"):
            result.result(timeout=EVENT_TIMEOUT)
    np.testing.assert_array_equal(batcher.submit(np.ones(2, np.float32)).result(timeout=EVENT_TIMEOUT), [2, 2])
    assert model.shapes == [1, 2, 1]  # the blocker, the failed pass, the next one


def test_queries_go_before_waiting_index_inputs():
    model = RecordingModel(gated=True)
    batcher = DynamicBatcher(model, max_batch=1, wait_seconds=0.0)
    blocker = occupy(batcher, model, 1)  # holds the model while the rest queue up
    index = [batcher.submit(np.full(1, value, np.float32), INDEX_PRIORITY) for value in (1, 2)]
    query = batcher.submit(np.full(1, 99, np.float32), QUERY_PRIORITY)
    model.release()
    for result in [blocker, *index, query]:
        result.result(timeout=EVENT_TIMEOUT)
    assert model.first_rows == [-1, 99, 1, 2]


def test_many_threads_submitting_at_once():
    model = RecordingModel(gated=True)
    batcher = DynamicBatcher(model, max_batch=16, wait_seconds=0.02)
    outputs: dict[int, np.ndarray] = {}
    submitted = threading.Semaphore(0)

    def caller(value: int) -> None:
        result = batcher.submit(np.full(4, value, np.float32))
        submitted.release()
        outputs[value] = result.result(timeout=EVENT_TIMEOUT)

    threads = [threading.Thread(target=caller, args=(value,)) for value in range(64)]
    for thread in threads:
        thread.start()
    for _ in threads:  # every input is in before the first pass (held at the gate) ends
        assert submitted.acquire(timeout=EVENT_TIMEOUT)
    model.release()
    for thread in threads:
        thread.join(EVENT_TIMEOUT)
    assert all((outputs[value] == 2 * value).all() for value in range(64))
    assert sum(size * count for size, count in batcher.batch_sizes().items()) == 64
    assert max(batcher.batch_sizes()) == 16  # at least 48 were waiting when the gate opened
    assert set(model.shapes) <= set(fixed_sizes(16))


def fresh_heartbeat(store, pid: int, timeout: float = 60) -> None:
    """Return once the worker of ``pid`` has announced counts taken after this call.

    The worker computes its info, then stamps the beat: the first beat stamped after now may
    carry counts from before now; the one after it cannot.
    """
    name = f"{socket.gethostname()}:{pid}"
    deadline = time.monotonic() + timeout
    since = time.time()
    for _ in range(2):
        while (stamp := store.redis.zscore(keys.WORKERS, name)) is None or stamp <= since:
            assert time.monotonic() < deadline, f"no heartbeat from {name} for {timeout} s"
            time.sleep(0.05)
        since = stamp


def test_worker_shares_forward_passes_between_concurrent_tasks(api, collection, store, worker):
    """Index tasks submitted together run in shared passes; the worker reports its pass sizes."""
    from tests.conftest import natural_images
    from tests.test_end_to_end import ready

    def passes() -> dict[int, int]:
        """The session worker's pass sizes as /readyz shows them, once a heartbeat carries the counts of now."""
        fresh_heartbeat(store, worker.process.pid)
        [ours] = [info for info in ready(api)["workers"] if info["pid"] == worker.process.pid]
        return {int(size): count for size, count in ours["batch_sizes"].items()}

    images = list(natural_images().values())[:12]
    before = passes()
    response = api.http.post(api.url(f"/v1/collections/{collection}/batches"),
                             files=[("image", (f"{n}.jpg", data)) for n, data in enumerate(images)])
    assert response.status_code == 202, response.text
    for item in response.json()["tasks"]:
        task = api.client.wait(item["task_id"], 120)
        assert task["state"] == "succeeded", task
    after = passes()
    new_passes = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in new_passes.items()) == len(images)
    assert max(size for size, count in new_passes.items() if count) > 1

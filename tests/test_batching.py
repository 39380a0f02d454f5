"""Dynamic batching: concurrent images share forward passes, each keeping its own outcome."""

import threading
import time

import numpy as np
import pytest

from worker.batcher import INDEX_PRIORITY, QUERY_PRIORITY, DynamicBatcher, fixed_sizes


class RecordingModel:
    """A stand-in forward pass (pure NumPy) that records the shapes it was given."""

    def __init__(self, delay: float = 0.0, fail_when=lambda batch: False):
        self.shapes: list[int] = []
        self.first_rows: list[float] = []
        self.delay = delay
        self.fail_when = fail_when

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape[0])
        self.first_rows.append(float(batch[0, 0]))
        time.sleep(self.delay)
        if self.fail_when(batch):
            raise RuntimeError("forward pass failed")
        return batch * 2


def test_fixed_sizes():
    assert fixed_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert fixed_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert fixed_sizes(1) == [1]


def test_concurrent_inputs_share_passes_of_fixed_sizes_and_get_their_own_rows():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch=8, wait_seconds=0.2)
    results = [batcher.submit(np.full(3, value, np.float32)) for value in range(7)]
    rows = [result.result(timeout=5) for result in results]
    for value, row in enumerate(rows):
        np.testing.assert_array_equal(row, np.full(3, 2 * value))
    # Seven gathered inputs run as the fixed sizes 4 + 2 + 1, in arrival order, unpadded.
    assert model.shapes == [4, 2, 1]
    assert model.first_rows == [0, 4, 6]
    assert batcher.batch_sizes() == {1: 1, 2: 1, 4: 1}


def test_a_pass_never_exceeds_max_batch():
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch=4, wait_seconds=0.2)
    rows = batcher.run_all([np.full(2, value, np.float32) for value in range(10)])
    assert rows[:, 0].tolist() == [2.0 * value for value in range(10)]
    assert model.shapes == [4, 4, 2]
    assert batcher.batch_sizes() == {2: 1, 4: 2}


def test_a_lone_input_waits_only_the_batch_window():
    batcher = DynamicBatcher(RecordingModel(), max_batch=32, wait_seconds=0.05)
    started = time.monotonic()
    batcher.submit(np.zeros(2, np.float32)).result(timeout=5)
    assert time.monotonic() - started < 1.0
    assert batcher.batch_sizes() == {1: 1}


def test_a_failed_pass_fails_its_callers_and_the_next_pass_runs():
    model = RecordingModel(fail_when=lambda batch: (batch == 666).any())
    batcher = DynamicBatcher(model, max_batch=4, wait_seconds=0.1)
    doomed = [batcher.submit(np.full(2, value, np.float32)) for value in (1, 666)]
    for result in doomed:
        with pytest.raises(RuntimeError, match="forward pass failed"):
            result.result(timeout=5)
    np.testing.assert_array_equal(batcher.submit(np.ones(2, np.float32)).result(timeout=5), [2, 2])


def test_queries_go_before_waiting_index_inputs():
    model = RecordingModel(delay=0.3)
    batcher = DynamicBatcher(model, max_batch=1, wait_seconds=0.0)
    blocker = batcher.submit(np.full(1, -1, np.float32))  # occupies the model while the rest queue up
    time.sleep(0.1)
    index = [batcher.submit(np.full(1, value, np.float32), INDEX_PRIORITY) for value in (1, 2)]
    query = batcher.submit(np.full(1, 99, np.float32), QUERY_PRIORITY)
    for result in [blocker, *index, query]:
        result.result(timeout=5)
    assert model.first_rows == [-1, 99, 1, 2]


def test_many_threads_submitting_at_once():
    model = RecordingModel(delay=0.01)
    batcher = DynamicBatcher(model, max_batch=16, wait_seconds=0.02)
    outputs: dict[int, np.ndarray] = {}

    def caller(value: int) -> None:
        outputs[value] = batcher.submit(np.full(4, value, np.float32)).result(timeout=10)

    threads = [threading.Thread(target=caller, args=(value,)) for value in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all((outputs[value] == 2 * value).all() for value in range(64))
    assert sum(size * count for size, count in batcher.batch_sizes().items()) == 64
    assert max(batcher.batch_sizes()) > 1
    assert set(model.shapes) <= set(fixed_sizes(16))


def test_worker_shares_forward_passes_between_concurrent_tasks(api, collection):
    """Index tasks submitted together run in shared passes; the worker reports its pass sizes."""
    from tests.conftest import natural_images

    def passes() -> dict[int, int]:
        [worker] = api.http.get(api.url("/readyz")).json()["workers"]
        return {int(size): count for size, count in worker["batch_sizes"].items()}

    images = list(natural_images().values())[:12]
    before = passes()
    response = api.http.post(api.url(f"/v1/collections/{collection}/batches"),
                             files=[("image", (f"{n}.jpg", data)) for n, data in enumerate(images)])
    assert response.status_code == 202, response.text
    for item in response.json()["tasks"]:
        task = api.http.get(api.url(f"/v1/tasks/{item['task_id']}"), params={"wait": 30}).json()
        assert task["state"] == "succeeded", task
    time.sleep(1.5)  # one heartbeat (LOOKALIKE_HEARTBEAT_SECONDS=1 in tests) carries the new counts
    after = passes()
    new_passes = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in new_passes.items()) == len(images)
    assert max(size for size, count in new_passes.items() if count) > 1

"""Celery tasks for bench/scale.py's gather comparison, run by a worker it starts: a scattered search's answers
gathered by Celery's chord on the Redis result backend, or by Lookalike's gather next to the task record
(shared.store.Store.gather_answer). Both end the same way: the merged outcome written to the task record,
which the benchmark waits on. The answers are of a query's size (k candidates each), the work none."""

import os

from celery import Celery

from shared.settings import Settings
from shared.store import Store

URL = os.environ["BENCH_REDIS_URL"]
app = Celery("gather-bench", broker=URL, backend=URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, result_expires=600, broker_connection_retry=True)
store = Store.from_settings(Settings(redis_url=URL))


def candidates(group: int, k: int) -> dict:
    return {"cnn": [{"id": f"g{group}/{n}", "score": 0.5, "pdq_distance": None, "metadata": {}} for n in range(k)],
            "pdq": [], "whitened": None}


@app.task(name="bench.chord_answer")
def chord_answer(group: int, k: int) -> dict:
    return candidates(group, k)


@app.task(name="bench.chord_merge")
def chord_merge(answers: list[dict], task_id: str) -> None:
    store.finish_task(task_id, "succeeded", result={"candidates": sum(len(answer["cnn"]) for answer in answers)})


@app.task(name="bench.gather_answer")
def gather_answer(task_id: str, group: int, groups: int, k: int) -> None:
    answers = store.gather_answer(task_id, str(group), candidates(group, k), groups)
    if answers is not None:
        store.finish_task(task_id, "succeeded",
                          result={"candidates": sum(len(answer["cnn"]) for answer in answers.values())})

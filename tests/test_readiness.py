"""The fixtures' readiness wait (tests/conftest.py ManagedProcess.wait_until) holds on a busy machine:
a check that fails or times out counts as "not yet" until the deadline, not as an error."""

import sys

import pytest
import redis
import requests

import tests.conftest as conftest
from tests.conftest import ManagedProcess


@pytest.fixture
def sleeper(tmp_path):
    process = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], {}, tmp_path)
    yield process
    process.stop()


def test_failed_and_slow_checks_count_as_not_yet(sleeper):
    answers = iter([
        requests.ReadTimeout("/healthz slower than its timeout"),  # what errored 161 tests on a busy machine
        requests.ConnectionError("refused: not listening yet"),
        requests.exceptions.ChunkedEncodingError("cut off mid-answer"),
        redis.exceptions.TimeoutError("Redis busy"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        False,
        True,
    ])
    calls = []

    def ready() -> bool:
        calls.append(1)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sleeper.wait_until(ready, "a test answer")
    assert len(calls) == 7


def test_the_deadline_error_names_the_last_failed_check(sleeper, monkeypatch):
    monkeypatch.setattr(conftest, "STARTUP_TIMEOUT_SECONDS", 0.5)

    def ready() -> bool:
        raise requests.ReadTimeout("still too slow")

    with pytest.raises(RuntimeError, match=r"sleeper: no a test answer after 0.5 s \(last check: ReadTimeout"):
        sleeper.wait_until(ready, "a test answer")


def test_a_process_that_exits_is_reported_at_once(tmp_path):
    process = ManagedProcess("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"], {}, tmp_path)
    try:
        process.process.wait(60)
        with pytest.raises(RuntimeError, match=r"quitter exited with 3 before a test answer:\nbye"):
            process.wait_until(lambda: False, "a test answer")
    finally:
        process.stop()

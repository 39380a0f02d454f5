"""Bounds on the long polls (``GET /v1/tasks/{id}?wait=``) one API process holds at once.

A waiting poll holds one of gunicorn's threads (16 per process) for up to 30 s: 48 polls of
one key once held them all, and /healthz waited 27 s behind them. So a process lets at most
``LOOKALIKE_MAX_WAITING_POLLS`` polls wait at once, and at most
``LOOKALIKE_MAX_WAITING_POLLS_PER_KEY`` of one API key (of one client address with keys
off). A poll beyond either is not refused: it is answered at once with the task as it
stands, as ``wait=0`` would be, with ``Retry-After: 1`` to say when to ask again. The counts
live in the process (nothing to leak in Redis when a process dies); with several processes
each has its own.
"""

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

# Seconds a poll answered without waiting suggests the client wait before asking again.
RETRY_AFTER_SECONDS = 1


class WaitSlots:
    def __init__(self, total: int, per_caller: int):
        self.total = total
        self.per_caller = per_caller
        self._lock = threading.Lock()
        self._waiting: Counter[str] = Counter()

    @contextmanager
    def slot(self, caller: str) -> Iterator[bool]:
        """True (a slot held until the block ends) when ``caller`` may wait now, else False."""
        with self._lock:
            granted = sum(self._waiting.values()) < self.total and self._waiting[caller] < self.per_caller
            if granted:
                self._waiting[caller] += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._waiting[caller] -= 1
                    if self._waiting[caller] <= 0:
                        del self._waiting[caller]

    def waiting(self) -> int:
        with self._lock:
            return sum(self._waiting.values())

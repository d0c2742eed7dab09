"""One thread that runs callbacks after a delay, for the operator's queues.

Why not `threading.Timer`: that starts a thread per call, and the Model pass queue re-checks every held
pass every 0.2 s, so a burst started a hundred threads a second that did nothing but sleep. Callbacks
here must be quick (they request work from a queue; the work runs on that queue's own threads).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("realm.operator.timers")


class Timers:
    def __init__(self, name: str = "timers") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callable[..., object], tuple[Any, ...]]] = []
        self._order = itertools.count()  # ties run in the order they were scheduled
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._order), fn, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """Callbacks scheduled and not yet run."""
        with self._cond:
            return len(self._heap)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, fn, args = heapq.heappop(self._heap)
            try:
                fn(*args)
            except Exception:  # one bad callback must not stop the others
                log.exception("%s: a scheduled callback failed", self._name)

"""A keyed work queue with two lanes, for passes the operator runs outside kopf's handler machinery.

Why not a kopf `on.create`/`on.update` handler per Tenant: kopf then writes its own annotation to
every object after each handler run (one more write and one more watch event per Tenant), and in a
burst of a thousand Tenants the writes that matter (the API key Secrets) wait behind everything else
in one FIFO. Here a watch event only *requests* a pass; the queue runs it on its own threads:

- keyed and coalescing: a key requested while queued is not queued twice, and a key requested while its
  pass runs gets exactly one more pass after it (so no change is missed and no two passes of one key
  ever run at once);
- two lanes: `urgent` passes run before any `normal` pass is started, and while urgent requests keep
  arriving (one came in the last `quiet` seconds) normal passes wait, `max_hold` at most (client-go's
  workqueue has one lane; the second is what lets a burst create every Tenant's key before anyone's
  status is written: on two shared cores the apiserver cannot take a Tenant's three writes as fast as
  a client creates Tenants, so doing the writes that matter first is what keeps their latency flat);
- failed passes are requested again after a per-key backoff, reset by a success;
- the passes run in a copy of a captured `contextvars.Context`, so they can post Kubernetes events
  through kopf (kopf finds its event queue in context variables that only its handlers carry).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from realm.operator.timers import Timers

log = logging.getLogger("realm.operator.workqueue")

K = TypeVar("K", bound=Hashable)
DEFAULT_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        run: Callable[[K, bool], object],
        *,
        workers: int = 8,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        quiet: float = 0.0,
        max_hold: float = 10.0,
        name: str = "work",
    ) -> None:
        self._run_pass = run
        self._workers = workers
        self._backoff = tuple(backoff)
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # workers wait here for keys
        self._idle = threading.Condition(self._lock)  # wait_idle waits here
        self._quiet = quiet
        self._max_hold = max_hold
        self._last_urgent = float("-inf")  # when an urgent request last came
        self._urgent: deque[K] = deque()
        self._normal: deque[tuple[K, float]] = deque()  # with when it was queued
        self._queued: dict[K, bool] = {}  # key -> urgent
        self._running: set[K] = set()
        self._again: dict[K, bool] = {}  # requested while running -> urgent
        self._failures: dict[K, int] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._timers = Timers(f"{name}-timers")
        self._retrying = 0  # failed passes waiting for their retry
        self.context: contextvars.Context | None = None
        self.passes = 0
        self.failed = 0

    def request(self, key: K, urgent: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            if key in self._running:
                self._again[key] = self._again.get(key, False) or urgent
                return
            queued = self._queued.get(key)
            if queued is not None and (queued or not urgent):
                return  # already waiting in the same or a faster lane
            self._queued[key] = urgent
            if urgent:
                self._last_urgent = time.monotonic()
                self._urgent.append(key)
            else:
                self._normal.append((key, time.monotonic()))
            self._start_workers()
            self._wake.notify()

    def urgent_active(self) -> bool:
        """Whether urgent passes wait, or urgent requests came within `quiet` (other work may hold back)."""
        with self._lock:
            recent = time.monotonic() - self._last_urgent < self._quiet
            return recent or any(self._queued.get(k) for k in self._urgent)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, running or waiting to be retried (tests)."""
        with self._lock:
            return self._idle.wait_for(lambda: not (self._queued or self._running or self._retrying), timeout)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()

    def _start_workers(self) -> None:
        while len(self._threads) < self._workers:
            t = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    def _take(self) -> tuple[K, bool] | None:
        """The next key to run and its lane (lock held); None when closed."""
        while not self._closed:
            while self._urgent:
                key = self._urgent.popleft()
                if self._queued.get(key) is True:
                    return self._claim(key, True)
            # A key moved to the urgent lane leaves a stale entry behind in the normal one.
            while self._normal and self._queued.get(self._normal[0][0]) is not False:
                self._normal.popleft()
            if not self._normal:
                self._wake.wait()
                continue
            now = time.monotonic()
            hold = min(self._quiet - (now - self._last_urgent), self._max_hold - (now - self._normal[0][1]))
            if hold > 0:
                self._wake.wait(hold)
                continue
            return self._claim(self._normal.popleft()[0], False)
        return None

    def _claim(self, key: K, urgent: bool) -> tuple[K, bool]:
        del self._queued[key]
        self._running.add(key)
        return key, urgent

    def _loop(self) -> None:
        while True:
            with self._lock:
                taken = self._take()
            if taken is None:
                return
            key, urgent = taken
            ok = self._run(key, urgent)
            with self._lock:
                self.passes += 1
                self._running.discard(key)
                failures = 0 if ok else self._failures.get(key, 0) + 1
                if ok:
                    self._failures.pop(key, None)
                else:
                    self.failed += 1
                    self._failures[key] = failures
                again = self._again.pop(key, None)
                self._idle.notify_all()
            if again is not None:
                self.request(key, again)
            elif not ok:
                delay = self._backoff[min(failures, len(self._backoff)) - 1]
                with self._lock:
                    self._retrying += 1
                self._timers.call_later(delay, self._retry, key, urgent)

    def _retry(self, key: K, urgent: bool) -> None:
        self.request(key, urgent)  # queued before it stops counting as retrying: wait_idle sees no gap
        with self._lock:
            self._retrying -= 1
            self._idle.notify_all()

    def _run(self, key: K, urgent: bool) -> bool:
        try:
            if self.context is not None:
                self.context.copy().run(self._run_pass, key, urgent)
            else:
                self._run_pass(key, urgent)
            return True
        except Exception:
            log.exception("%s pass of %s failed; retrying", self._name, key)
            return False

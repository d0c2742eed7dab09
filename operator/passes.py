"""Coalesced Model passes: many changes in a burst become one pass per Model that sees them all.

A Model's runtime ConfigMap is a function of the Model, every Tenant and every Pipeline of its
namespace. When a thousand Tenants are applied at once, running one full pass per Tenant would redo the
same work a thousand times. Instead, a change *requests* a pass: a Model with a pass already queued
ignores the request (the queued pass reads the world when it starts, so it will see the change), and a
Model whose pass is running gets exactly one more pass after it. At most one pass per Model runs at a
time, on a small pool of worker threads. A new pass waits `settle` seconds before it starts, and a
pass that follows another waits `spacing`: the burst gathers into one pass instead of a pass per change
that each rewrite the same ConfigMap (controller-runtime's workqueue rate limiting, in miniature).

A failed pass (e.g. the apiserver is down) is requested again after a delay; the Models' timers stay
as the safety net.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("realm.operator.passes")

Key = tuple[str, str]  # (namespace, model)


class PassQueue:
    def __init__(
        self,
        run: Callable[[str, str], object],
        workers: int = 4,
        retry_seconds: float = 2.0,
        settle: float = 0.2,
        spacing: float = 1.0,
    ) -> None:
        self._run_pass = run
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-pass")
        self._lock = threading.Lock()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._idle = threading.Condition(self._lock)
        self.retry_seconds = retry_seconds
        self.settle = settle
        self.spacing = spacing
        self.passes = 0  # passes run, for the benchmark's requests-per-pass figure
        self.requests = 0

    def request(self, namespace: str, model: str) -> None:
        key = (namespace, model)
        with self._lock:
            self.requests += 1
            if key in self._queued:
                return
            if key in self._running:
                self._again.add(key)
                return
            self._queued.add(key)
        self._later(self.settle, key)

    def _later(self, delay: float, key: Key) -> None:
        if delay <= 0:
            self._pool.submit(self._work, key)
            return
        timer = threading.Timer(delay, self._pool.submit, args=(self._work, key))
        timer.daemon = True
        timer.start()

    def _work(self, key: Key) -> None:
        with self._lock:
            self._queued.discard(key)
            self._running.add(key)
        failed = False
        try:
            self._run_pass(*key)
        except Exception:
            failed = True
            log.exception("pass of Model %s/%s failed; retrying in %.0fs", key[0], key[1], self.retry_seconds)
        with self._lock:
            self.passes += 1
            self._running.discard(key)
            again = key in self._again
            self._again.discard(key)
            if again:
                self._queued.add(key)
            self._idle.notify_all()
        if again:
            self._later(self.spacing, key)
        elif failed:
            timer = threading.Timer(self.retry_seconds, self.request, args=key)
            timer.daemon = True
            timer.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (tests)."""
        with self._lock:
            return self._idle.wait_for(lambda: not (self._queued or self._running), timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

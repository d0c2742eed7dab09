"""Coalesced Model passes: many changes in a burst become one pass per Model that sees them all.

A Model's runtime ConfigMap is a function of the Model, every Tenant and every Pipeline of its
namespace. When a thousand Tenants are applied at once, running one full pass per Tenant would redo the
same work a thousand times. Instead, a change *requests* a pass: a Model with a pass already queued
ignores the request (the queued pass reads the world when it starts, so it will see the change), and a
Model whose pass is running gets exactly one more pass after it. At most one pass per Model runs at a
time, on a small pool of worker threads. A queued pass is debounced: it starts once no request came for
`settle` seconds, or `max_wait` after its first request, whichever is sooner, and a pass that follows
another waits `spacing` at least. A lone change is published within `settle`; a burst gathers into one
pass every `max_wait` instead of a pass per change that each rewrite the same ConfigMap (measured: 1,000
Tenants with a fixed 1 s spacing cost 200-340 Model passes, a third of the operator's CPU).

A failed pass (e.g. the apiserver is down) is requested again after a delay; the Models' timers stay
as the safety net.

`defer`, when given, holds passes back while it says so (re-checked every `settle`, for `max_hold` at
most): the operator holds Model passes while Tenants' API keys wait to be created, since a pass before
then would publish a config without those keys and be redone right after. A request with `now` (a new
Model: nothing of it exists yet, so waiting gains nothing) skips the settling and the hold once.
Passes run in a copy of `context` when set (kopf's event posting lives in context variables, see
workqueue.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from realm.operator.timers import Timers

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
        max_wait: float = 3.0,
        max_hold: float = 10.0,
        defer: Callable[[], bool] | None = None,
        kind: str = "Model",
    ) -> None:
        self._run_pass = run
        self._kind = kind  # what its keys name, for the log
        self._defer = defer
        self.context: contextvars.Context | None = None
        self.deferred = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-pass")
        self._lock = threading.Lock()
        self._queued: dict[Key, tuple[float, float]] = {}  # key -> (first, last) request time
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._now: set[Key] = set()  # queued keys whose next pass skips settling and deferral
        self._timers = Timers("model-pass-timers")
        self._retrying = 0  # failed passes waiting for their retry
        self._idle = threading.Condition(self._lock)
        self.retry_seconds = retry_seconds
        self.settle = settle
        self.spacing = spacing
        self.max_wait = max_wait
        self.max_hold = max_hold
        self.passes = 0  # passes run, for the benchmark's requests-per-pass figure
        self.requests = 0

    def request(self, namespace: str, model: str, now: bool = False) -> None:
        key = (namespace, model)
        t = time.monotonic()
        with self._lock:
            self.requests += 1
            queued = self._queued.get(key)
            if queued is not None:
                # Its pending wake-up comes within `settle`, and then sees `now`.
                self._queued[key] = (queued[0], t)
                if now:
                    self._now.add(key)
                return
            if key in self._running:
                self._again.add(key)
                return
            self._queued[key] = (t, t)
            if now:
                self._now.add(key)
        self._later(0 if now else self.settle, key)

    def _later(self, delay: float, key: Key) -> None:
        if delay <= 0:
            self._submit(key)
        else:
            self._timers.call_later(delay, self._submit, key)

    def _submit(self, key: Key) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: nothing runs any more
            self._pool.submit(self._work, key)

    def _retry(self, key: Key) -> None:
        self.request(*key)  # queued before it stops counting as retrying: wait_idle sees no gap
        with self._lock:
            self._retrying -= 1
            self._idle.notify_all()

    def _work(self, key: Key) -> None:
        now = time.monotonic()
        with self._lock:
            first, last = self._queued.get(key, (now, now))
            urgent = key in self._now
        wait = min(self.settle - (now - last), self.max_wait - (now - first))
        if wait > 0.01 and not urgent:  # requests keep arriving: keep gathering them (the key stays queued)
            self._later(wait, key)
            return
        if not urgent and self._defer is not None and now - first < self.max_hold and self._defer():
            with self._lock:
                self.deferred += 1
            self._later(max(self.settle, 0.05), key)
            return
        with self._lock:
            self._queued.pop(key, None)
            self._now.discard(key)
            self._running.add(key)
        failed = False
        try:
            if self.context is not None:
                self.context.copy().run(self._run_pass, *key)
            else:
                self._run_pass(*key)
        except Exception:
            failed = True
            log.exception(
                "pass of %s %s/%s failed; retrying in %.0fs", self._kind, key[0], key[1], self.retry_seconds
            )
        with self._lock:
            self.passes += 1
            self._running.discard(key)
            again = key in self._again
            self._again.discard(key)
            if again:
                done = time.monotonic()
                self._queued[key] = (done, done)
            self._idle.notify_all()
        if again:
            self._later(self.spacing, key)
        elif failed:
            with self._lock:
                self._retrying += 1
            self._timers.call_later(self.retry_seconds, self._retry, key)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, running or waiting to be retried (tests)."""
        with self._lock:
            return self._idle.wait_for(lambda: not (self._queued or self._running or self._retrying), timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

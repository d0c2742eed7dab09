"""Counters of one store, for tests and for whoever wires Prometheus (`listener`).

Names are fixed (the `Event` literal); a failed load also carries a reason. The listener is called on the
thread that counted (event loop, I/O pool or uploader): it must be cheap and thread-safe, which a
prometheus_client Counter's `inc()` is.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Literal

Event = Literal[
    "lookup",  # lookups asked
    "hit_memory",  # loads served per tier
    "hit_disk",
    "hit_s3",
    "miss",  # lookups that found nothing usable
    "load_failed",  # a candidate was rejected or unreachable; the reason says why
    "put",  # snapshots accepted by put()
    "put_skipped",  # shorter than one block, another engine's fingerprint, or too large
    "put_dropped",  # the upload queue was full: kept in memory only
    "disk_written",
    "disk_error",
    "s3_uploaded",
    "s3_upload_error",
    "evicted_memory",
    "evicted_disk",
    "s3_deleted",  # by expire / enforce_max_bytes / delete_tenant
    "s3_probe",  # HEAD requests issued by lookups
    "s3_skipped",  # S3 calls not made because the circuit breaker is open
]

#: Why a load failed: a bad object ("corrupt", "truncated"), one for another scope or prompt ("mismatch"),
#: one without this installation's MAC ("forged": written by someone else, or tampered with),
#: S3 unreachable or failing ("s3_error"), the caller's deadline ("timeout"), gone meanwhile ("not_found").
Reason = Literal[
    "corrupt", "truncated", "mismatch", "forged", "s3_error", "timeout", "not_found", "disk_error"
]

Listener = Callable[[Event, str], None]


class KVStoreStats:
    def __init__(self, listener: Listener | None = None) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.listener = listener

    def inc(self, event: Event, reason: str = "", n: int = 1) -> None:
        with self._lock:
            self._counts[event] += n
            if reason:
                self._counts[f"{event}:{reason}"] += n
        if self.listener is not None:
            for _ in range(n):
                self.listener(event, reason)

    def failed(self, reason: Reason) -> None:
        self.inc("load_failed", reason)

    def get(self, event: Event, reason: str = "") -> int:
        with self._lock:
            return self._counts[f"{event}:{reason}" if reason else event]

    def snapshot(self) -> dict[str, int]:
        """Every counter, with 'event:reason' entries for reasons."""
        with self._lock:
            return dict(self._counts)

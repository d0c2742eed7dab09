"""The settings every kopf run starts with (main.py's flags refine peering before kopf starts), and the
process tuning that goes with them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import kopf

FINALIZER = "realm.dev/operator"


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own arena (up to 8 per core) and rarely returns their
    memory: with 16 handler threads that alone doubles the RSS. Two arenas cost nothing measurable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def configure(settings: kopf.OperatorSettings) -> None:
    """Defaults for every run (handlers.py calls this from kopf's startup)."""
    _limit_malloc_arenas()
    # Watches are re-established every ~60 s: a silently dropped connection costs a minute at most.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    # API errors: retry fast first, give up waiting after ~1 min between tries.
    settings.networking.error_backoffs = [1, 2, 4, 8, 15, 30, 60]
    settings.networking.request_timeout = 60
    # Progress and the last handled spec go to annotations, not status: the status schemas are
    # structural (generated from pydantic), so the apiserver would prune a `status.kopf` field and
    # kopf would lose track of retries and re-run handlers forever. Annotations are always kept.
    prefix = "operator.realm.dev"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration", v1=False
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.reporting_component = "realm-operator"
    # kopf's own log lines ("Handler succeeded") stay in the log; the events that say what the operator
    # did are posted by outcome.report, whatever this level.
    settings.posting.level = logging.WARNING
    # kopf waits this long for the echo of its own patch before it trusts an older event again. Under a
    # burst (a thousand Tenants at once) the echo can take longer than the 5 s default, and kopf would
    # then run a create handler a second time on a stale copy.
    settings.persistence.consistency_timeout = 30
    settings.execution.max_workers = 16
    # Objects handled at once (kopf runs one asyncio worker per object). Bounding them bounds memory in
    # a burst. A worker lingers `idle_timeout` after its last event (5 s by default) and holds its slot
    # meanwhile: in a burst of a thousand Tenants the 401st then waited ~5 s for a slot, in steps (p99
    # Tenant -> Secret 14 s). Tenant and Secret handlers only request passes, so a worker is done in
    # milliseconds and can go at once.
    settings.batching.worker_limit = 400
    settings.batching.idle_timeout = 0.5
    # kopf holds each object's first event this long for more of the same object to batch with; the
    # handlers here are level-based and cheap, so a short window only saves latency.
    settings.batching.batch_window = 0.02
    # The event loop (every watch event) shares the GIL with the pass threads; a thread that wants the
    # GIL waits up to this long for the holder to yield. 5 ms (the default) let the loop fall behind in
    # a burst (p99 Tenant -> Secret 2.5-4.9 s over three runs; 1.9-3.7 s with 1 ms).
    sys.setswitchinterval(0.001)

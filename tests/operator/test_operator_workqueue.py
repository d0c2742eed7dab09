"""The operator's keyed two-lane work queue (operator/workqueue.py) and the Model pass queue's hold."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from realm.operator.passes import PassQueue
from realm.operator.workqueue import WorkQueue

LONG = 10.0  # hang guard only


class Recorder:
    """Runs passes that block until released, recording (key, urgent) in the order they started."""

    def __init__(self) -> None:
        self.started: list[tuple[str, bool]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.fail: dict[str, int] = {}  # key -> failures still to raise

    def __call__(self, key: str, urgent: bool) -> None:
        with self.lock:
            self.started.append((key, urgent))
            failing = self.fail.get(key, 0)
            if failing:
                self.fail[key] = failing - 1
        assert self.release.wait(LONG)
        if failing:
            raise RuntimeError(f"{key} failed on purpose")


def wait_until(pred: object, timeout: float = LONG) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_urgent_keys_run_before_any_normal_one_and_requests_coalesce() -> None:
    rec = Recorder()
    q: WorkQueue[str] = WorkQueue(rec, workers=1, name="t")
    q.request("busy")  # occupies the single worker while the rest queue up
    wait_until(lambda: rec.started == [("busy", False)])
    for key in ("a", "b", "a", "c"):
        q.request(key)
    q.request("c", urgent=True)  # promoted: runs first, and only once
    q.request("d", urgent=True)
    q.request("d")  # a normal request for a key waiting urgently changes nothing
    assert q.urgent_active()
    rec.release.set()
    assert q.wait_idle(LONG)
    assert rec.started == [("busy", False), ("c", True), ("d", True), ("a", False), ("b", False)]
    assert not q.urgent_active() and q.passes == 5 and q.failed == 0
    q.shutdown()


def test_a_key_requested_while_its_pass_runs_runs_exactly_once_more_never_concurrently() -> None:
    running = threading.Event()
    release = threading.Event()
    active: list[int] = []
    overlaps: list[int] = []
    runs: list[bool] = []

    def run(key: str, urgent: bool) -> None:
        active.append(1)
        if len(active) > 1:
            overlaps.append(len(active))
        runs.append(urgent)
        running.set()
        assert release.wait(LONG)
        active.pop()

    q: WorkQueue[str] = WorkQueue(run, workers=4, name="t")
    q.request("k")
    assert running.wait(LONG)
    for _ in range(5):
        q.request("k")
    q.request("k", urgent=True)
    release.set()
    assert q.wait_idle(LONG)
    assert runs == [False, True] and overlaps == []
    q.shutdown()


def test_a_failed_pass_is_retried_after_its_backoff_until_it_succeeds() -> None:
    rec = Recorder()
    rec.release.set()
    rec.fail["flaky"] = 2
    q: WorkQueue[str] = WorkQueue(rec, workers=2, backoff=(0.01, 0.02), name="t")
    q.request("flaky", urgent=True)
    wait_until(lambda: len(rec.started) == 3)
    assert q.wait_idle(LONG)
    # Retries keep the lane they failed in; the third run succeeded, so nothing is scheduled again.
    assert rec.started == [("flaky", True)] * 3 and q.failed == 2
    time.sleep(0.1)
    assert len(rec.started) == 3
    q.shutdown()


def test_passes_run_in_a_copy_of_the_captured_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    seen: list[str] = []
    q: WorkQueue[str] = WorkQueue(lambda key, urgent: seen.append(var.get("unset")), workers=1)
    q.request("before")
    assert q.wait_idle(LONG)
    token = var.set("kopf's event queue")
    q.context = contextvars.copy_context()
    var.reset(token)
    q.request("after")
    assert q.wait_idle(LONG)
    assert seen == ["unset", "kopf's event queue"]
    q.shutdown()


def test_a_closed_queue_takes_no_more_requests() -> None:
    rec = Recorder()
    rec.release.set()
    q: WorkQueue[str] = WorkQueue(rec, workers=1)
    q.shutdown()
    q.request("late")
    assert q.wait_idle(LONG) and rec.started == []


def test_model_passes_hold_while_defer_says_so_and_coalesce_meanwhile() -> None:
    hold = threading.Event()
    hold.set()
    ran: list[tuple[str, str]] = []
    q = PassQueue(lambda ns, m: ran.append((ns, m)), settle=0.01, spacing=0.01, defer=hold.is_set)
    for _ in range(10):
        q.request("ns", "chat")
    wait_until(lambda: q.deferred >= 3)
    assert ran == []
    hold.clear()
    wait_until(lambda: ran)
    assert q.wait_idle(LONG)
    assert ran == [("ns", "chat")] and q.requests == 10
    q.shutdown()


@pytest.mark.parametrize("workers", [1, 8])
def test_every_requested_key_runs(workers: int) -> None:
    done: set[int] = set()
    lock = threading.Lock()

    def run(key: int, urgent: bool) -> None:
        with lock:
            done.add(key)

    q: WorkQueue[int] = WorkQueue(run, workers=workers)
    for i in range(500):
        q.request(i, urgent=i % 7 == 0)
    assert q.wait_idle(LONG)
    assert done == set(range(500))
    q.shutdown()


def test_a_steady_stream_of_requests_is_published_every_max_wait_not_starved() -> None:
    """Requests closer together than `settle` never let the debounce settle: `max_wait` still runs a
    pass while they keep coming, and the stream costs far fewer passes than requests."""
    ran: list[float] = []
    q = PassQueue(lambda ns, m: ran.append(time.monotonic()), settle=0.1, spacing=0.01, max_wait=0.25)
    began = time.monotonic()
    requests = 0
    while time.monotonic() - began < 1.2:
        q.request("ns", "chat")
        requests += 1
        time.sleep(0.01)
    stream_ended = time.monotonic()
    assert q.wait_idle(LONG)
    during = [t for t in ran if t < stream_ended]
    assert during, "no pass while the requests kept coming"
    assert 2 <= len(ran) < requests
    q.shutdown()


def test_normal_passes_wait_while_urgent_requests_keep_coming_then_run() -> None:
    rec = Recorder()
    rec.release.set()
    q: WorkQueue[str] = WorkQueue(rec, workers=2, quiet=1.0, max_hold=LONG, name="t")
    q.request("key-1", urgent=True)
    q.request("status")
    wait_until(lambda: ("key-1", True) in rec.started)
    for i in range(2, 6):  # urgent requests closer together than `quiet`
        q.request(f"key-{i}", urgent=True)
        assert q.urgent_active()
        time.sleep(0.05)
    assert ("status", False) not in rec.started
    assert q.wait_idle(LONG)
    assert rec.started[-1] == ("status", False) and len(rec.started) == 6


def test_max_hold_bounds_the_wait_of_normal_passes() -> None:
    rec = Recorder()
    rec.release.set()
    q: WorkQueue[str] = WorkQueue(rec, workers=1, quiet=LONG, max_hold=0.1, name="t")
    q.request("key", urgent=True)  # quiet would hold normal passes for LONG seconds
    q.request("status")
    assert q.wait_idle(LONG)  # max_hold let it through long before
    assert rec.started == [("key", True), ("status", False)]


def test_a_now_request_skips_settling_and_the_hold_once() -> None:
    """A new Model's pass (`now`) runs while other passes are held; its later passes are held again."""
    hold = threading.Event()
    hold.set()
    ran: list[str] = []
    q = PassQueue(lambda ns, m: ran.append(m), settle=0.05, spacing=0.01, defer=hold.is_set)
    q.request("ns", "old")
    q.request("ns", "new", now=True)
    wait_until(lambda: "new" in ran)
    q.request("ns", "new")
    wait_until(lambda: q.deferred >= 4)
    assert ran == ["new"]
    hold.clear()
    assert q.wait_idle(LONG)
    assert sorted(ran) == ["new", "new", "old"]
    q.shutdown()


def test_wait_idle_waits_for_a_scheduled_retry() -> None:
    """A failed pass is not idle work: wait_idle returns only once its retry has run."""
    rec = Recorder()
    rec.release.set()
    rec.fail["flaky"] = 1
    q: WorkQueue[str] = WorkQueue(rec, workers=1, backoff=(0.2,), name="t")
    q.request("flaky")
    assert q.wait_idle(LONG)
    assert rec.started == [("flaky", False), ("flaky", False)] and q.failed == 1
    q.shutdown()

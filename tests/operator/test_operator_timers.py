"""The operator queues' one timer thread (operator/timers.py)."""

from __future__ import annotations

import threading
import time

from realm.operator.timers import Timers

LONG = 10.0  # hang guard only


def test_callbacks_run_in_time_order_ties_in_scheduling_order_on_one_thread() -> None:
    timers = Timers("t")
    ran: list[str] = []
    threads: set[str] = set()
    done = threading.Event()

    def note(what: str) -> None:
        ran.append(what)
        threads.add(threading.current_thread().name)
        if len(ran) == 4:
            done.set()

    timers.call_later(0.15, note, "late")
    timers.call_later(0.05, note, "tie-1")
    timers.call_later(0.05, note, "tie-2")
    timers.call_later(0.0, note, "now")
    assert done.wait(LONG)
    assert ran == ["now", "tie-1", "tie-2", "late"]
    assert threads == {"t"} and timers.pending() == 0


def test_a_failing_callback_does_not_stop_the_others() -> None:
    timers = Timers("t")
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    timers.call_later(0.0, boom)
    timers.call_later(0.01, done.set)
    assert done.wait(LONG)


def test_an_earlier_callback_scheduled_later_wakes_the_thread() -> None:
    """The thread sleeps until its earliest callback; a new earlier one must not wait behind it."""
    timers = Timers("t")
    done = threading.Event()
    timers.call_later(LONG, lambda: None)
    began = time.monotonic()
    timers.call_later(0.01, done.set)
    assert done.wait(LONG / 2) and time.monotonic() - began < LONG / 2
    assert timers.pending() == 1

"""Tests of the admission scheduler (realm.runtime.scheduler).

Rate limits are driven by an injected fake clock: `FakeClock` is a fake at a seam no issue names
(the scheduler's `clock=` constructor argument), so quota tests move time by hand and never sleep.
Queueing tests only yield to the event loop (`settle()`); no test depends on wall-clock timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from realm.runtime.scheduler import (
    AdmissionClosed,
    AdmissionScheduler,
    QueueFull,
    QuotaExceeded,
    TenantPolicy,
    Ticket,
)
from realm.runtime.spec.tenant import Quotas, TenantSpec

MODEL = "m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def settle() -> None:
    """Let woken tasks run; a handful of loop iterations covers future -> task resumption."""
    for _ in range(5):
        await asyncio.sleep(0)


def make(
    policies: dict[str, TenantPolicy] | None = None,
    capacity: dict[str, int] | None = None,
    clock: FakeClock | None = None,
) -> AdmissionScheduler:
    sched = AdmissionScheduler(capacity or {MODEL: 4}, clock=clock or FakeClock())
    sched.set_policies(policies or {})
    return sched


async def admit(sched: AdmissionScheduler, tenant: str, model: str = MODEL, **kw: int) -> Ticket:
    return await sched.admit(
        tenant, model, prompt_tokens=kw.get("prompt_tokens", 1), max_tokens=kw.get("max_tokens", 1)
    )


def release(ticket: Ticket, prompt_tokens: int = 1, completion_tokens: int = 1) -> None:
    ticket.release(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


class Recorder:
    """Spawns admits as tasks and records the order in which they are granted."""

    def __init__(self, sched: AdmissionScheduler) -> None:
        self.sched = sched
        self.granted: list[tuple[str, Ticket]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, tenant: str, label: str | None = None, model: str = MODEL) -> None:
        async def run() -> None:
            ticket = await admit(self.sched, tenant, model)
            self.granted.append((label or tenant, ticket))

        self.tasks.append(asyncio.create_task(run()))

    @property
    def order(self) -> list[str]:
        return [label for label, _ in self.granted]

    async def release_one_at_a_time(self, first: Ticket, count: int) -> None:
        """With capacity 1: release the holder, let exactly one waiter in, repeat `count` times."""
        holder = first
        for _ in range(count):
            before = len(self.granted)
            release(holder)
            await settle()
            assert len(self.granted) == before + 1, "each release must admit exactly one waiter"
            holder = self.granted[-1][1]


RecorderFactory = Callable[[AdmissionScheduler], Recorder]


# Function loop scope: the admits run in each test's own loop (the project default for fixtures is the
# session loop), and cancelling them must happen in that same loop.
@pytest_asyncio.fixture(loop_scope="function")
async def recorder() -> AsyncIterator[RecorderFactory]:
    """Recorders whose still-waiting admit tasks are cancelled (and awaited) when the test ends."""
    made: list[Recorder] = []

    def factory(sched: AdmissionScheduler) -> Recorder:
        made.append(Recorder(sched))
        return made[-1]

    yield factory
    tasks = [task for rec in made for task in rec.tasks]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- rate quotas -------------------------------------------------------------------------------------


async def test_rpm_exceeded_raises_with_retry_after_from_refill_rate() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(requests_per_minute=2)}, clock=clock)
    await admit(sched, "a")
    await admit(sched, "a")
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.kind == "requests_per_minute"
    # 2 per minute refill one request every 30 s.
    assert info.value.retry_after == pytest.approx(30.0)
    assert info.value.message


async def test_rpm_retry_after_is_honest_and_never_zero() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(requests_per_minute=2)}, clock=clock)
    await admit(sched, "a")
    await admit(sched, "a")
    clock.advance(29.5)
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.retry_after == pytest.approx(0.5)
    assert info.value.retry_after > 0
    clock.advance(info.value.retry_after)
    ticket = await admit(sched, "a")  # waiting exactly retry_after is enough
    assert ticket.tenant == "a"


async def test_rpm_is_per_tenant() -> None:
    sched = make({"a": TenantPolicy(requests_per_minute=1), "b": TenantPolicy(requests_per_minute=1)})
    await admit(sched, "a")
    with pytest.raises(QuotaExceeded):
        await admit(sched, "a")
    assert (await admit(sched, "b")).tenant == "b"


async def test_tpm_allows_request_larger_than_quota_then_debt_blocks_until_refund() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(tokens_per_minute=100)}, clock=clock)
    # max_tokens far above the per-minute quota: admitted because the bucket is not in debt.
    ticket = await admit(sched, "a", prompt_tokens=10, max_tokens=490)
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.kind == "tokens_per_minute"
    # Level is 100 - 500 = -400; reaching 1 token at 100/60 tokens per second takes 401 * 0.6 s.
    assert info.value.retry_after == pytest.approx(401 * 0.6)

    # Actual usage was 10 + 40 = 50: the 450 over-estimated tokens come back, leaving 50.
    release(ticket, prompt_tokens=10, completion_tokens=40)
    second = await admit(sched, "a", prompt_tokens=20, max_tokens=30)
    assert second.tenant == "a"
    # That one charged exactly the remaining 50, so the bucket is empty and the wait is for 1 token.
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.retry_after == pytest.approx(0.6)


async def test_tpm_debt_recovers_with_time() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(tokens_per_minute=60)}, clock=clock)
    await admit(sched, "a", prompt_tokens=60, max_tokens=60)  # level -60, never released
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.retry_after == pytest.approx(61.0)
    clock.advance(61.0)
    assert (await admit(sched, "a")).tenant == "a"


async def test_usage_above_estimate_is_charged_on_release() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(tokens_per_minute=60)}, clock=clock)
    ticket = await admit(sched, "a", prompt_tokens=5, max_tokens=5)  # level 50
    release(ticket, prompt_tokens=5, completion_tokens=65)  # 60 more than estimated: level -10
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.retry_after == pytest.approx(11.0)


async def test_quota_refusal_charges_nothing() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(requests_per_minute=2, tokens_per_minute=10)}, clock=clock)
    await admit(sched, "a", prompt_tokens=20, max_tokens=0)  # rpm 1 left, tokens -10
    for _ in range(5):
        with pytest.raises(QuotaExceeded) as info:
            await admit(sched, "a")
        assert info.value.kind == "tokens_per_minute"
    # The refused attempts did not spend the one remaining request: after token refill it passes.
    clock.advance(info.value.retry_after)
    assert (await admit(sched, "a")).tenant == "a"


# -- concurrency and capacity ------------------------------------------------------------------------


async def test_concurrency_cap_holds_extra_requests_and_releases_them_in_order(
    recorder: RecorderFactory,
) -> None:
    sched = make({"a": TenantPolicy(max_concurrent_requests=2)}, capacity={MODEL: 10})
    rec = recorder(sched)
    for i in range(5):
        rec.spawn("a", label=f"r{i}")
    await settle()
    assert rec.order == ["r0", "r1"]
    assert sched.running(tenant="a") == 2
    assert sched.queue_depth(tenant="a") == 3

    release(rec.granted[0][1])
    await settle()
    assert rec.order == ["r0", "r1", "r2"]
    release(rec.granted[1][1])
    release(rec.granted[2][1])
    await settle()
    assert rec.order == ["r0", "r1", "r2", "r3", "r4"]
    assert sched.running(tenant="a") == 2
    assert sched.queue_depth() == 0


async def test_model_capacity_is_shared_across_tenants(recorder: RecorderFactory) -> None:
    sched = make(capacity={MODEL: 2, "other": 1})
    a1 = await admit(sched, "a")
    b1 = await admit(sched, "b")
    assert sched.running(model=MODEL) == 2
    rec = recorder(sched)
    rec.spawn("a", label="a2")
    await settle()
    assert rec.order == []
    assert sched.queue_depth(model=MODEL) == 1
    # Another model's slots are separate.
    assert (await admit(sched, "a", "other")).model == "other"

    release(b1)  # b's slot goes to a's waiter
    await settle()
    assert rec.order == ["a2"]
    assert sched.running(model=MODEL) == 2
    assert sched.running(tenant="a", model=MODEL) == 2
    assert sched.running(tenant="b") == 0
    release(a1)
    assert sched.running(model=MODEL) == 1


async def test_tenant_at_cap_is_skipped_without_losing_its_place(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(max_concurrent_requests=1)}, capacity={MODEL: 2})
    a1 = await admit(sched, "a")
    z1 = await admit(sched, "z")
    rec = recorder(sched)
    for label in ("a2", "a3"):
        rec.spawn("a", label=label)
    for label in ("b1", "b2"):
        rec.spawn("b", label=label)
    await settle()
    assert rec.order == []

    release(z1)  # a model slot frees while a is at its cap: a is skipped, b goes
    await settle()
    assert rec.order == ["b1"]
    release(a1)  # a is under its cap again and still ahead of b in the round
    await settle()
    assert rec.order == ["b1", "a2"]
    release(rec.granted[0][1])  # a at cap again (a2 runs): b2, not a3
    await settle()
    assert rec.order == ["b1", "a2", "b2"]
    release(rec.granted[1][1])
    await settle()
    assert rec.order == ["b1", "a2", "b2", "a3"]


async def test_capped_tenant_waiters_do_not_hold_free_model_slots(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(max_concurrent_requests=1)}, capacity={MODEL: 3})
    await admit(sched, "a")
    rec = recorder(sched)
    rec.spawn("a", label="a2")
    rec.spawn("a", label="a3")
    await settle()
    assert rec.order == []
    # Two model slots are free while a's waiters sit at a's cap: b goes straight in.
    b = await admit(sched, "b")
    assert b.queue_wait_s == 0.0
    assert sched.running(model=MODEL) == 2
    assert sched.queue_depth(tenant="a") == 2


async def test_cap_release_on_one_model_admits_tenant_waiter_on_another(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(max_concurrent_requests=1)}, capacity={"x": 1, "y": 1})
    on_x = await admit(sched, "a", "x")
    rec = recorder(sched)
    rec.spawn("a", label="on_y", model="y")
    await settle()
    assert rec.order == []
    release(on_x)
    await settle()
    assert rec.order == ["on_y"]
    assert sched.running(tenant="a", model="y") == 1


# -- fairness ----------------------------------------------------------------------------------------


async def test_flooding_tenant_cannot_starve_another(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(max_queued_requests=100)}, capacity={MODEL: 1})
    holder = await admit(sched, "z")
    rec = recorder(sched)
    for _ in range(100):
        rec.spawn("a")
    await settle()
    for _ in range(3):
        rec.spawn("b")
    await settle()
    assert sched.queue_depth(tenant="a") == 100
    assert sched.queue_depth(tenant="b") == 3

    await rec.release_one_at_a_time(holder, 6)
    # Equal weights: the two flows alternate, so b's three requests are in within six admissions
    # although a queued 100 before them.
    assert rec.order.count("b") == 3
    assert rec.order == ["a", "b"] * 3


async def test_late_arrival_waits_at_most_one_turn(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(weight=5)}, capacity={MODEL: 1})
    holder = await admit(sched, "z")
    rec = recorder(sched)
    for _ in range(50):
        rec.spawn("a")
    await settle()
    await rec.release_one_at_a_time(holder, 2)  # a is mid-turn
    rec.spawn("b")
    await settle()
    await rec.release_one_at_a_time(rec.granted[-1][1], 6)
    # b joined at the end of the round: a finishes its turn of 5 (3 of it left), then b goes.
    assert rec.order == ["a", "a", "a", "a", "a", "b", "a", "a"]
    assert rec.order.count("b") == 1


async def test_weights_give_proportional_shares_under_contention(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(weight=3), "b": TenantPolicy(weight=1)}, capacity={MODEL: 1})
    holder = await admit(sched, "z")
    rec = recorder(sched)
    for _ in range(40):
        rec.spawn("a")
        rec.spawn("b")
    await settle()
    await rec.release_one_at_a_time(holder, 40)
    assert rec.order.count("a") == 30
    assert rec.order.count("b") == 10
    # Interleaved, not in blocks: every window of four admissions contains b exactly once.
    for start in range(0, 40, 4):
        assert rec.order[start : start + 4].count("b") == 1


# -- cancellation ------------------------------------------------------------------------------------


async def test_cancelled_waiting_admit_leaves_no_leak() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(tokens_per_minute=100)}, capacity={MODEL: 1}, clock=clock)
    holder = await admit(sched, "z")
    task = asyncio.create_task(admit(sched, "a", prompt_tokens=10, max_tokens=90))
    await settle()
    assert sched.queue_depth(tenant="a") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sched.queue_depth() == 0
    assert sched.running(tenant="a") == 0
    release(holder)
    assert sched.in_flight == 0
    # The cancelled request's 100-token estimate was refunded: 99 tokens pass and leave exactly one.
    big = await admit(sched, "a", prompt_tokens=50, max_tokens=49)
    release(big, prompt_tokens=50, completion_tokens=49)
    assert (await admit(sched, "a")).tenant == "a"


async def test_cancelled_waiter_does_not_take_a_slot(recorder: RecorderFactory) -> None:
    sched = make(capacity={MODEL: 1})
    holder = await admit(sched, "z")
    rec = recorder(sched)
    rec.spawn("a", label="cancelled")
    rec.spawn("b", label="b")
    await settle()
    rec.tasks[0].cancel()
    release(holder)  # in the same loop iteration as the cancellation, before its cleanup ran
    await settle()
    assert rec.order == ["b"]
    assert sched.running() == 1
    assert sched.queue_depth() == 0


async def test_cancel_right_after_grant_gives_the_slot_back() -> None:
    sched = make(capacity={MODEL: 1})
    holder = await admit(sched, "z")
    task = asyncio.create_task(admit(sched, "a"))
    await settle()
    release(holder)  # grants the waiter synchronously...
    assert sched.running(tenant="a") == 1
    task.cancel()  # ...but its client leaves before the task resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sched.running() == 0
    assert sched.in_flight == 0
    assert sched.queue_depth() == 0


# -- queue limits, close, reload ---------------------------------------------------------------------


async def test_queue_full(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(max_queued_requests=2)}, capacity={MODEL: 1})
    await admit(sched, "a")
    rec = recorder(sched)
    rec.spawn("a")
    rec.spawn("a")
    await settle()
    assert sched.queue_depth(tenant="a") == 2
    with pytest.raises(QueueFull) as info:
        await admit(sched, "a")
    assert info.value.retry_after > 0
    assert info.value.message
    assert sched.queue_depth(tenant="a") == 2
    # Another tenant's queue is its own.
    rec.spawn("b")
    await settle()
    assert sched.queue_depth(tenant="b") == 1


async def test_queue_full_does_not_apply_when_admitted_immediately() -> None:
    sched = make({"a": TenantPolicy(max_queued_requests=0)}, capacity={MODEL: 1})
    ticket = await admit(sched, "a")
    assert ticket.queue_wait_s == 0.0
    with pytest.raises(QueueFull):
        await admit(sched, "a")


async def test_queue_full_charges_no_quota() -> None:
    sched = make({"a": TenantPolicy(max_queued_requests=0, requests_per_minute=2)}, capacity={MODEL: 1})
    first = await admit(sched, "a")
    with pytest.raises(QueueFull):
        await admit(sched, "a")
    release(first)
    assert (await admit(sched, "a")).tenant == "a"  # second request of the minute, not third


async def test_close_fails_waiters_and_new_admits_but_not_in_flight() -> None:
    sched = make(capacity={MODEL: 1})
    holder = await admit(sched, "a")
    waiter = asyncio.create_task(admit(sched, "b"))
    await settle()
    sched.close()
    with pytest.raises(AdmissionClosed):
        await waiter
    with pytest.raises(AdmissionClosed):
        await admit(sched, "c")
    assert sched.queue_depth() == 0
    assert sched.in_flight == 1  # the in-flight ticket is untouched
    release(holder)
    assert sched.in_flight == 0
    assert sched.running() == 0


async def test_set_policies_keeps_queued_and_in_flight_work_of_removed_tenants(
    recorder: RecorderFactory,
) -> None:
    sched = make({"a": TenantPolicy(max_concurrent_requests=1), "b": TenantPolicy()}, capacity={MODEL: 1})
    running_a = await admit(sched, "a")
    rec = recorder(sched)
    rec.spawn("a", label="a2")
    rec.spawn("b", label="b1")
    await settle()
    sched.set_policies({"b": TenantPolicy(weight=2)})  # a removed while it has work
    assert sched.running(tenant="a") == 1
    assert sched.queue_depth(tenant="a") == 1
    release(running_a)
    await settle()
    release(rec.granted[0][1])
    await settle()
    assert sorted(rec.order) == ["a2", "b1"]
    release(rec.granted[1][1])
    assert sched.in_flight == 0
    assert sched.queue_depth() == 0


async def test_set_policies_raising_cap_admits_waiters_at_once(recorder: RecorderFactory) -> None:
    sched = make({"a": TenantPolicy(max_concurrent_requests=1)}, capacity={MODEL: 4})
    await admit(sched, "a")
    rec = recorder(sched)
    rec.spawn("a")
    rec.spawn("a")
    await settle()
    assert sched.queue_depth(tenant="a") == 2
    sched.set_policies({"a": TenantPolicy(max_concurrent_requests=3)})
    await settle()
    assert len(rec.granted) == 2
    assert sched.running(tenant="a") == 3


async def test_set_policies_does_not_reset_quota_debt() -> None:
    sched = make({"a": TenantPolicy(requests_per_minute=1)})
    await admit(sched, "a")
    sched.set_policies({"a": TenantPolicy(requests_per_minute=1, weight=2)})
    with pytest.raises(QuotaExceeded):
        await admit(sched, "a")


# -- tickets -----------------------------------------------------------------------------------------


async def test_release_is_idempotent() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(tokens_per_minute=100)}, capacity={MODEL: 2}, clock=clock)
    other = await admit(sched, "b")
    ticket = await admit(sched, "a", prompt_tokens=10, max_tokens=90)  # level 0
    release(ticket, prompt_tokens=10, completion_tokens=0)  # refunds 90: level 90
    release(ticket, prompt_tokens=0, completion_tokens=0)  # ignored: would refund 100 more
    assert ticket.released
    assert sched.running() == 1
    assert sched.running(tenant="b") == 1
    # Exactly one refund happened: 90 tokens use the bucket up.
    await admit(sched, "a", prompt_tokens=90, max_tokens=0)
    with pytest.raises(QuotaExceeded):
        await admit(sched, "a")
    release(other)
    release(other)
    assert sched.running(tenant="b") == 0
    assert sched.in_flight == 1


async def test_async_with_releases_with_reported_usage() -> None:
    clock = FakeClock()
    sched = make({"a": TenantPolicy(tokens_per_minute=100)}, clock=clock)
    async with await sched.admit("a", MODEL, prompt_tokens=10, max_tokens=1000) as ticket:
        assert sched.running(tenant="a") == 1
        ticket.report(prompt_tokens=10, completion_tokens=30)
    assert ticket.released
    assert sched.in_flight == 0
    # 100 - 40 actually used = 60 left: a 60-token request leaves the bucket at exactly 0.
    await sched.admit("a", MODEL, prompt_tokens=60, max_tokens=0)
    with pytest.raises(QuotaExceeded) as info:
        await admit(sched, "a")
    assert info.value.retry_after == pytest.approx(0.6)


async def test_async_with_releases_on_error() -> None:
    sched = make()
    with pytest.raises(RuntimeError):
        async with await admit(sched, "a"):
            raise RuntimeError("engine failed")
    assert sched.in_flight == 0


async def test_queue_wait_is_recorded(recorder: RecorderFactory) -> None:
    clock = FakeClock()
    sched = make(capacity={MODEL: 1}, clock=clock)
    holder = await admit(sched, "a")
    assert holder.queue_wait_s == 0.0
    rec = recorder(sched)
    rec.spawn("b")
    await settle()
    clock.advance(2.5)
    release(holder)
    await settle()
    assert rec.granted[0][1].queue_wait_s == pytest.approx(2.5)


# -- construction ------------------------------------------------------------------------------------


async def test_unknown_model_and_negative_counts_are_rejected() -> None:
    sched = make()
    with pytest.raises(ValueError):
        await admit(sched, "a", "nope")
    with pytest.raises(ValueError):
        await admit(sched, "a", max_tokens=-1)
    assert sched.in_flight == 0


def test_policy_from_spec() -> None:
    spec = TenantSpec(
        weight=7,
        quotas=Quotas(
            requests_per_minute=60, tokens_per_minute=9000, max_concurrent_requests=4, max_queued_requests=8
        ),
    )
    assert TenantPolicy.from_spec(spec) == TenantPolicy(
        weight=7,
        requests_per_minute=60,
        tokens_per_minute=9000,
        max_concurrent_requests=4,
        max_queued_requests=8,
    )
    assert TenantPolicy.from_spec(TenantSpec()) == TenantPolicy()


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TenantPolicy(weight=0)
    with pytest.raises(ValueError):
        TenantPolicy(requests_per_minute=0)
    with pytest.raises(ValueError):
        AdmissionScheduler({MODEL: 0})

"""Admission of WebAssembly invocations (realm.runtime.scheduler.invocations): per-tenant and global
caps, fair order by weight, refusals when a queue is full or a wait too long, withdrawal of cancelled
waiters; and the per-tenant rate of module deploys.

The deploy quota is driven by an injected fake clock (`FakeClock`, a fake at the scheduler's `clock=`
seam). Queueing tests only yield to the event loop; the one wait bound is a few milliseconds of real
loop time, awaited without any threshold on how long it took.
"""

from __future__ import annotations

import asyncio

import pytest

from realm.runtime.scheduler import (
    AdmissionClosed,
    InvocationAdmission,
    InvocationsBusy,
    InvocationSlot,
    QuotaExceeded,
    TenantPolicy,
)

LONG_WAIT_S = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def make(
    policies: dict[str, TenantPolicy], max_in_flight: int = 8, max_wait_s: float = LONG_WAIT_S
) -> InvocationAdmission:
    admission = InvocationAdmission(max_in_flight, max_wait_s=max_wait_s, clock=FakeClock())
    admission.set_policies(policies)
    return admission


async def test_a_tenant_at_its_cap_waits_while_another_tenant_runs() -> None:
    admission = make({"evil": TenantPolicy(max_concurrent_invocations=2), "good": TenantPolicy()})
    held = [await admission.admit("evil") for _ in range(2)]
    queued = asyncio.ensure_future(admission.admit("evil"))
    await settle()
    assert not queued.done()
    good = await admission.admit("good")  # the global cap has room: no wait behind evil's queue
    assert (admission.running("evil"), admission.queued("evil"), good.tenant) == (2, 1, "good")
    held[0].release()
    assert (await queued).tenant == "evil"


async def test_the_global_cap_bounds_all_tenants_together() -> None:
    admission = make({"a": TenantPolicy(), "b": TenantPolicy()}, max_in_flight=2)
    await admission.admit("a")
    await admission.admit("b")
    third = asyncio.ensure_future(admission.admit("a"))
    await settle()
    assert not third.done() and admission.running() == 2
    third.cancel()


async def test_waiters_are_served_by_weight() -> None:
    admission = make({"heavy": TenantPolicy(weight=2), "light": TenantPolicy()}, max_in_flight=1)
    blocker = await admission.admit("light")
    order: list[str] = []

    async def one(tenant: str) -> None:
        slot = await admission.admit(tenant)
        order.append(tenant)
        await asyncio.sleep(0)
        slot.release()

    tasks = [asyncio.ensure_future(one(t)) for t in ["light"] * 3 + ["heavy"] * 6]
    await settle()
    blocker.release()
    await asyncio.gather(*tasks)
    assert order == ["light", "heavy", "heavy", "light", "heavy", "heavy", "light", "heavy", "heavy"]


async def test_a_full_queue_is_refused_with_retry_after() -> None:
    admission = make({"evil": TenantPolicy(max_concurrent_invocations=1, max_queued_invocations=1)})
    await admission.admit("evil")
    waiting = asyncio.ensure_future(admission.admit("evil"))
    await settle()
    with pytest.raises(InvocationsBusy) as info:
        await admission.admit("evil")
    assert info.value.retry_after > 0
    waiting.cancel()


async def test_a_waiter_is_refused_after_the_longest_wait() -> None:
    admission = make({"a": TenantPolicy(max_concurrent_invocations=1)}, max_wait_s=0.01)
    await admission.admit("a")
    with pytest.raises(InvocationsBusy):
        await admission.admit("a")
    assert admission.queued("a") == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    admission = make({"a": TenantPolicy(max_concurrent_invocations=1)})
    running = await admission.admit("a")
    waiting = asyncio.ensure_future(admission.admit("a"))
    await settle()
    waiting.cancel()  # its client hung up
    await settle()
    assert admission.queued("a") == 0
    running.release()
    assert admission.running("a") == 0


async def test_close_refuses_the_queued_and_the_new() -> None:
    admission = make({"a": TenantPolicy(max_concurrent_invocations=1)})
    await admission.admit("a")
    waiting = asyncio.ensure_future(admission.admit("a"))
    await settle()
    admission.close()
    with pytest.raises(AdmissionClosed):
        await waiting
    with pytest.raises(AdmissionClosed):
        await admission.admit("b")


async def test_a_slot_whose_runtime_share_is_released_still_counts_for_its_tenant() -> None:
    admission = make({"sleepy": TenantPolicy(max_concurrent_invocations=1), "good": TenantPolicy()}, 1)
    slot = await admission.admit("sleepy")
    slot.release_runtime_share()
    slot.release_runtime_share()  # twice frees the share once
    assert (admission.running(), admission.running("sleepy")) == (0, 1)
    good = await admission.admit("good")  # the runtime-wide cap of 1 has room again
    queued = asyncio.ensure_future(admission.admit("sleepy"))
    await settle()
    assert not queued.done()  # sleepy is still at its own cap
    good.release()
    slot.release()
    assert (await queued).tenant == "sleepy"
    assert admission.running() == 1


async def test_a_slot_released_twice_frees_one_slot() -> None:
    admission = make({"a": TenantPolicy(max_concurrent_invocations=2)})
    slot: InvocationSlot = await admission.admit("a")
    await admission.admit("a")
    slot.release()
    slot.release()
    assert admission.running("a") == 1


def test_deploys_beyond_the_rate_are_refused_until_the_bucket_refills() -> None:
    clock = FakeClock()
    admission = InvocationAdmission(8, max_wait_s=LONG_WAIT_S, clock=clock)
    admission.set_policies({"a": TenantPolicy(module_deploys_per_minute=2)})
    admission.charge_deploy("a")
    admission.charge_deploy("a")
    with pytest.raises(QuotaExceeded) as info:
        admission.charge_deploy("a")
    assert info.value.kind == "module_deploys_per_minute"
    assert info.value.retry_after == pytest.approx(30.0)
    clock.now += 30.0
    admission.charge_deploy("a")


def test_deploy_rates_are_per_tenant() -> None:
    admission = make({"a": TenantPolicy(module_deploys_per_minute=1), "b": TenantPolicy()})
    admission.charge_deploy("a")
    admission.charge_deploy("b")
    with pytest.raises(QuotaExceeded):
        admission.charge_deploy("a")

"""Cross-pod calls count once against a tenant's rate quotas: the calling pod charges them
(`charge_only`), the serving pod admits the call for fairness without charging (`charge=False`).
The clock is a fake at the scheduler's `clock=` seam."""

from __future__ import annotations

import pytest

from realm.runtime.scheduler import AdmissionScheduler, QuotaExceeded, TenantPolicy

MODEL = "m"


class FakeClock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(policy: TenantPolicy, slots: int = 4) -> AdmissionScheduler:
    sched = AdmissionScheduler({MODEL: slots}, clock=FakeClock())
    sched.set_policies({"a": policy})
    return sched


async def test_a_call_admitted_without_charge_leaves_the_rate_quota_whole() -> None:
    sched = make(TenantPolicy(requests_per_minute=1))
    served = await sched.admit("a", MODEL, prompt_tokens=1, max_tokens=1, charge=False)
    served.release(prompt_tokens=1, completion_tokens=1)
    # The tenant's one request of the minute is still there.
    (await sched.admit("a", MODEL, prompt_tokens=1, max_tokens=1)).release(
        prompt_tokens=1, completion_tokens=0
    )


async def test_a_call_admitted_without_charge_still_holds_a_slot_under_the_tenants_cap() -> None:
    sched = make(TenantPolicy(max_concurrent_requests=1))
    held = await sched.admit("a", MODEL, prompt_tokens=1, max_tokens=1, charge=False)
    assert sched.running(tenant="a") == 1
    held.release(prompt_tokens=1, completion_tokens=1)


def test_charge_only_takes_the_request_from_the_rate_quota() -> None:
    sched = make(TenantPolicy(requests_per_minute=1))
    sched.charge_only("a", prompt_tokens=0, max_tokens=8)
    with pytest.raises(QuotaExceeded):
        sched.charge_only("a", prompt_tokens=0, max_tokens=8)


def test_charge_only_settles_tokens_with_the_usage_reported() -> None:
    sched = make(TenantPolicy(tokens_per_minute=100))
    ticket = sched.charge_only("a", prompt_tokens=0, max_tokens=10)
    # The serving pod reported 150 tokens (a long prompt): the bucket is in debt, the next call waits.
    ticket.release(prompt_tokens=140, completion_tokens=10)
    with pytest.raises(QuotaExceeded) as e:
        sched.charge_only("a", prompt_tokens=0, max_tokens=1)
    assert e.value.kind == "tokens_per_minute"


def test_charge_only_holds_no_engine_slot() -> None:
    sched = make(TenantPolicy(), slots=1)
    sched.charge_only("a", prompt_tokens=0, max_tokens=1)
    assert (sched.running(), sched.running(model=MODEL)) == (0, 0)

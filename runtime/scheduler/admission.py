"""The admission scheduler: which request enters which model's engine, and when.

Rate quotas are checked up front (a refusal is immediate, with an exact retry time); everything else
is waiting. A request waits in its tenant's FIFO for its model until both the tenant's concurrency
cap and the model's batch slots allow it; between tenants, deficit round robin decides. Engine-agnostic:
it only counts slots, and knows neither HTTP nor engines.

Everything runs on the event loop thread without awaiting inside a decision, so no locks are needed:
state changes (release, reload, cancellation) and the dispatch they trigger are atomic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import AdmissionClosed, QueueFull
from .fair_queue import FairQueue
from .policy import TenantPolicy
from .quotas import RateLimiter
from .shares import ShareSource
from .ticket import Ticket

# Tenants the scheduler has no policy for get the defaults: authenticating tenants is the caller's job,
# and refusing here would turn a config-reload race into failed requests.
_DEFAULT_POLICY = TenantPolicy()

# When a queue slot frees depends on how long other requests generate, which is unknowable here;
# one second is a polite hint rather than an estimate.
QUEUE_FULL_RETRY_AFTER_S = 1.0

K = TypeVar("K")


@dataclass(eq=False)  # identity equality: two waiters with the same fields are still different waiters
class _Waiter:
    tenant: str
    model: str
    prompt_tokens: int
    max_tokens: int
    enqueued_at: float
    future: asyncio.Future[Ticket]
    charged: bool = True


def _is_stale(waiter: _Waiter) -> bool:
    # Cancelled (or failed by close()) but its task has not yet run its cleanup.
    return waiter.future.done()


class AdmissionScheduler:
    def __init__(self, capacity: dict[str, int], *, clock: Callable[[], float] = time.monotonic) -> None:
        """capacity: model name -> max requests inside that model's engine at once (its batch slots)."""
        for model, slots in capacity.items():
            if slots < 1:
                raise ValueError(f"capacity of model {model!r} must be >= 1, got {slots}")
        self._capacity = dict(capacity)
        self._clock = clock
        self._policies: dict[str, TenantPolicy] = {}
        # Policies of tenants removed by a reload while they still had work: that work finishes under
        # the rules it was queued with, then the entry goes.
        self._retired: dict[str, TenantPolicy] = {}
        self._limiter = RateLimiter(clock)
        self._queues: dict[str, FairQueue[_Waiter]] = {m: FairQueue(_is_stale) for m in capacity}
        self._running_by_model: dict[str, int] = dict.fromkeys(capacity, 0)
        self._running_by_tenant: dict[str, int] = {}
        self._running_by_pair: dict[tuple[str, str], int] = {}
        self._in_flight = 0
        self._closed = False

    # -- configuration ---------------------------------------------------------------------------

    def set_policies(self, policies: dict[str, TenantPolicy]) -> None:
        """Replace tenant policies (config reload). Tenants removed keep their in-flight tickets; their
        queued waiters are still served. Never drops in-flight work."""
        previous = self._policies
        self._policies = dict(policies)
        for tenant, policy in previous.items():
            if tenant not in self._policies and self._has_work(tenant):
                self._retired[tenant] = policy
        for tenant in [t for t in self._retired if t in self._policies]:
            del self._retired[tenant]
        for tenant in previous.keys() - self._policies.keys() - self._retired.keys():
            self._limiter.forget(tenant)
        for tenant, policy in self._policies.items():
            self._limiter.sync(tenant, policy)
        # Raised caps or weights may let waiters in right now.
        for model in self._capacity:
            self._dispatch(model)

    def set_quota_shares(self, shares: ShareSource | None) -> None:
        """Enforce this pod's share of each tenant's rate quotas (a runtime in a cluster: shares.py),
        or, with None, the whole quota."""
        self._limiter.shares = shares
        self.refresh_quota_shares()

    def refresh_quota_shares(self) -> None:
        """Resize every tenant's buckets to its current share. The exchange calls this with each round
        of reports, so that a tenant idle here is resized too: a bucket sized only when its tenant's
        next request comes would keep, meanwhile, the level of its last share."""
        for tenant, policy in self._policies.items():
            self._limiter.sync(tenant, policy)

    def close(self) -> None:
        """New admits raise AdmissionClosed; queued waiters get AdmissionClosed too; tickets in flight are
        unaffected."""
        self._closed = True
        for queue in self._queues.values():
            for _tenant, waiter in queue.drain():
                if not waiter.future.done():
                    # The waiter's own task refunds its token charge when it sees the exception.
                    waiter.future.set_exception(AdmissionClosed())

    @property
    def closed(self) -> bool:
        return self._closed

    # -- admission -------------------------------------------------------------------------------

    async def admit(
        self, tenant: str, model: str, *, prompt_tokens: int, max_tokens: int, charge: bool = True
    ) -> Ticket:
        """Check rate quotas at once (raise QuotaExceeded with retry_after), then wait in the tenant's queue
        until both the tenant's concurrency cap and the model's capacity allow it; among tenants waiting for
        the same model, deficit round robin by weight. Cancellation-safe. Records queue wait on the ticket.

        `charge=False` is for a call another pod already charged to the tenant's rate quotas (a cross-pod
        call, see `charge_only`): it queues by the tenant's weight and concurrency cap like any other, but
        its rate quotas are neither checked nor charged here, so the call counts once.

        Raises QuotaExceeded, QueueFull, AdmissionClosed; ValueError for an unknown model or negative counts.
        """
        if self._closed:
            raise AdmissionClosed()
        if model not in self._capacity:
            raise ValueError(f"unknown model {model!r}")
        if prompt_tokens < 0 or max_tokens < 0:
            raise ValueError("prompt_tokens and max_tokens must be >= 0")
        policy = self._policy(tenant)
        queue = self._queues[model]
        # Dispatch runs after every change that could let a waiter in, so if a slot is free now nobody
        # eligible is waiting for it and going straight in overtakes no one.
        immediate = queue.depth(tenant) == 0 and self._can_start(tenant, model)

        # Quota before queue length, so a tenant out of quota learns the exact time it must wait;
        # neither refusal charges anything.
        if charge:
            self._limiter.check(tenant, policy, tokens=prompt_tokens + max_tokens)
        if not immediate and self._queued(tenant) >= policy.max_queued_requests:
            raise QueueFull(
                QUEUE_FULL_RETRY_AFTER_S,
                f"tenant {tenant!r} already has {policy.max_queued_requests} requests queued",
            )
        estimate = prompt_tokens + max_tokens if charge else 0
        if charge:
            self._limiter.charge(tenant, estimate)
        if immediate:
            return self._start(tenant, model, prompt_tokens, max_tokens, queue_wait_s=0.0, charged=charge)

        waiter = _Waiter(
            tenant,
            model,
            prompt_tokens,
            max_tokens,
            self._clock(),
            asyncio.get_running_loop().create_future(),
            charge,
        )
        queue.push(tenant, waiter)
        try:
            return await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted in the same loop iteration as the cancellation: nobody will use the slot.
                future.result().release(prompt_tokens=0, completion_tokens=0)
            else:
                queue.remove(tenant, waiter)
                if charge:
                    self._limiter.settle(tenant, estimate)
                self._forget_if_idle(tenant)
            raise

    def charge_only(self, tenant: str, *, prompt_tokens: int, max_tokens: int) -> Ticket:
        """Check and charge the tenant's rate quotas for a call another pod will run (a cross-pod call),
        without a slot here: the pod that runs it admits it with `charge=False`. Release the ticket with
        the usage that pod reported. Raises QuotaExceeded, AdmissionClosed."""
        if self._closed:
            raise AdmissionClosed()
        if prompt_tokens < 0 or max_tokens < 0:
            raise ValueError("prompt_tokens and max_tokens must be >= 0")
        self._limiter.check(tenant, self._policy(tenant), tokens=prompt_tokens + max_tokens)
        self._limiter.charge(tenant, prompt_tokens + max_tokens)
        return Ticket(
            tenant,
            "",
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            queue_wait_s=0.0,
            on_release=lambda t, used: self._limiter.settle(tenant, t.estimated_tokens - used),
        )

    # -- introspection ---------------------------------------------------------------------------

    def queue_depth(self, tenant: str | None = None, model: str | None = None) -> int:
        queues = list(self._queues.values()) if model is None else [self._queues.get(model)]
        return sum(
            (len(queue) if tenant is None else queue.depth(tenant)) for queue in queues if queue is not None
        )

    def running(self, tenant: str | None = None, model: str | None = None) -> int:
        if tenant is None and model is None:
            return self._in_flight
        if tenant is None:
            return self._running_by_model.get(model or "", 0)
        if model is None:
            return self._running_by_tenant.get(tenant, 0)
        return self._running_by_pair.get((tenant, model), 0)

    @property
    def in_flight(self) -> int:
        """All tickets not yet released."""
        return self._in_flight

    # -- internals -------------------------------------------------------------------------------

    def _policy(self, tenant: str) -> TenantPolicy:
        return self._policies.get(tenant) or self._retired.get(tenant) or _DEFAULT_POLICY

    def _weight(self, tenant: str) -> int:
        return self._policy(tenant).weight

    def _under_cap(self, tenant: str) -> bool:
        cap = self._policy(tenant).max_concurrent_requests
        return cap is None or self._running_by_tenant.get(tenant, 0) < cap

    def _can_start(self, tenant: str, model: str) -> bool:
        return self._running_by_model[model] < self._capacity[model] and self._under_cap(tenant)

    def _queued(self, tenant: str) -> int:
        return sum(queue.depth(tenant) for queue in self._queues.values())

    def _has_work(self, tenant: str) -> bool:
        return self._running_by_tenant.get(tenant, 0) > 0 or self._queued(tenant) > 0

    def _forget_if_idle(self, tenant: str) -> None:
        if tenant in self._retired and not self._has_work(tenant):
            del self._retired[tenant]
            self._limiter.forget(tenant)

    def _start(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        *,
        queue_wait_s: float,
        charged: bool = True,
    ) -> Ticket:
        self._running_by_model[model] += 1
        self._running_by_tenant[tenant] = self._running_by_tenant.get(tenant, 0) + 1
        self._running_by_pair[tenant, model] = self._running_by_pair.get((tenant, model), 0) + 1
        self._in_flight += 1
        return Ticket(
            tenant,
            model,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            queue_wait_s=queue_wait_s,
            on_release=self._release,
            charged=charged,
        )

    def _release(self, ticket: Ticket, used_tokens: int) -> None:
        tenant, model = ticket.tenant, ticket.model
        self._running_by_model[model] -= 1
        _decrement(self._running_by_tenant, tenant)
        _decrement(self._running_by_pair, (tenant, model))
        self._in_flight -= 1
        if ticket.charged:
            self._limiter.settle(tenant, ticket.estimated_tokens - used_tokens)
        self._dispatch(model)
        # The tenant's freed concurrency slot may be what its waiters on other models were missing.
        for other, queue in self._queues.items():
            if other != model and queue.depth(tenant):
                self._dispatch(other)
        self._forget_if_idle(tenant)

    def _dispatch(self, model: str) -> None:
        if self._closed:
            return
        queue = self._queues[model]
        while queue and self._running_by_model[model] < self._capacity[model]:
            picked = queue.pop(self._under_cap, self._weight)
            if picked is None:
                return  # every waiting tenant is at its concurrency cap
            tenant, waiter = picked
            ticket = self._start(
                tenant,
                model,
                waiter.prompt_tokens,
                waiter.max_tokens,
                queue_wait_s=max(0.0, self._clock() - waiter.enqueued_at),
                charged=waiter.charged,
            )
            waiter.future.set_result(ticket)


def _decrement(counts: dict[K, int], key: K) -> None:
    remaining = counts[key] - 1
    if remaining:
        counts[key] = remaining
    else:
        del counts[key]  # keeps the maps from growing with every tenant ever seen

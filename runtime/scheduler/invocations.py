"""Admission of WebAssembly invocations and module deploys: which tenant's invocation runs, and when.

An invocation holds a sandbox worker thread for as long as it runs (up to its deadline), so the
number running is capped twice: per tenant (`TenantPolicy.max_concurrent_invocations`) and for the
whole runtime (`max_in_flight`, kept below the sandbox's pool so that waiting happens here, where it
is fair and bounded, and never in the pool's FIFO). Waiters queue per tenant; between tenants,
deficit round robin by weight (fair_queue.py). A tenant whose queue is full, or a waiter that has
waited `max_wait_s`, is refused with `InvocationsBusy`: the caller should come back later, as the
runtime is saturated rather than the request being wrong.

Deploys are rate-limited per tenant (`TenantPolicy.module_deploys_per_minute`, a token bucket as in
quotas.py): compiling a module costs a core for up to seconds.

Everything runs on the event loop thread without awaiting inside a decision, as in admission.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from .errors import AdmissionClosed, QuotaExceeded
from .fair_queue import FairQueue
from .policy import TenantPolicy
from .quotas import TokenBucket

_DEFAULT_POLICY = TenantPolicy()

# When a slot frees depends on how long other tenants' guests run, which is unknowable here; one
# second is a polite hint rather than an estimate.
BUSY_RETRY_AFTER_S = 1.0


class InvocationsBusy(Exception):
    """No invocation slot: the tenant's queue is full, or the request waited `max_wait_s` for one."""

    def __init__(self, retry_after: float, message: str) -> None:
        self.retry_after = retry_after
        self.message = message
        super().__init__(message)


@dataclass(eq=False)  # identity equality: two waiters with the same fields are still different waiters
class _Waiter:
    tenant: str
    enqueued_at: float
    future: asyncio.Future[InvocationSlot]
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def _is_stale(waiter: _Waiter) -> bool:
    return waiter.future.done()


class InvocationSlot:
    """The right to run one invocation; release exactly once, when the guest has returned."""

    __slots__ = ("_on_release", "_on_release_share", "_released", "queue_wait_s", "shared", "tenant")

    def __init__(
        self,
        tenant: str,
        queue_wait_s: float,
        on_release: Callable[[InvocationSlot], None],
        on_release_share: Callable[[InvocationSlot], None],
    ) -> None:
        self.tenant = tenant
        self.queue_wait_s = queue_wait_s
        self._on_release = on_release
        self._on_release_share = on_release_share
        self._released = False
        # Whether it still counts towards the runtime-wide cap (max_in_flight).
        self.shared = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._on_release(self)

    def release_runtime_share(self) -> None:
        """Stop counting towards the runtime-wide cap while still counting towards the tenant's: for
        a run its caller was answered for while its thread is held (runner.InvocationAbandoned), so
        that such runs cost their own tenant its slots and nobody else theirs."""
        if self._released or not self.shared:
            return
        self.shared = False
        self._on_release_share(self)

    async def __aenter__(self) -> InvocationSlot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class InvocationAdmission:
    def __init__(
        self,
        max_in_flight: int,
        *,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """max_in_flight: invocations running at once, all tenants together; max_wait_s: the longest a
        request waits in the queue before it is refused."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s}")
        self.max_in_flight = max_in_flight
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._policies: dict[str, TenantPolicy] = {}
        self._queue: FairQueue[_Waiter] = FairQueue(_is_stale)
        self._running: dict[str, int] = {}
        self._in_flight = 0
        self._deploys: dict[str, TokenBucket] = {}
        self._closed = False

    # -- configuration ---------------------------------------------------------------------------

    def set_policies(self, policies: dict[str, TenantPolicy]) -> None:
        """Replace tenant policies (config reload). Running invocations keep their slots; raised caps
        or weights may let waiters in at once."""
        self._policies = dict(policies)
        now = self._clock()
        for tenant in list(self._deploys):
            if tenant not in self._policies:
                del self._deploys[tenant]
        for tenant, policy in self._policies.items():
            bucket = self._deploys.get(tenant)
            if bucket is None:
                self._deploys[tenant] = TokenBucket(policy.module_deploys_per_minute, now)
            elif bucket.capacity != policy.module_deploys_per_minute:
                bucket.resize(policy.module_deploys_per_minute, now)
        self._dispatch()

    def close(self) -> None:
        """New admits raise AdmissionClosed, and so do queued waiters; running invocations go on."""
        self._closed = True
        for _tenant, waiter in self._queue.drain():
            self._cancel_timer(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(AdmissionClosed())

    # -- deploys ---------------------------------------------------------------------------------

    def charge_deploy(self, tenant: str) -> None:
        """Take one deploy from the tenant's bucket, or raise QuotaExceeded with the exact wait."""
        now = self._clock()
        bucket = self._deploys.get(tenant)
        if bucket is None:
            # A tenant the policies do not list yet (a reload race): the default rate, not none.
            bucket = self._deploys[tenant] = TokenBucket(self._policy(tenant).module_deploys_per_minute, now)
        wait = bucket.seconds_until(1.0, now)
        if wait > 0.0:
            raise QuotaExceeded(
                "module_deploys_per_minute",
                wait,
                f"module_deploys_per_minute quota of tenant {tenant!r} exhausted",
            )
        bucket.take(1.0, now)

    # -- invocations -----------------------------------------------------------------------------

    async def admit(self, tenant: str) -> InvocationSlot:
        """A slot for one invocation of `tenant`'s module, at once or after waiting in its queue.
        Cancellation-safe: a waiter cancelled (its client gone) leaves the queue and takes no slot.

        Raises InvocationsBusy (queue full, or waited `max_wait_s`), AdmissionClosed.
        """
        if self._closed:
            raise AdmissionClosed()
        policy = self._policy(tenant)
        # Dispatch runs after every release, so a free slot now means nobody eligible is waiting.
        if self._queue.depth(tenant) == 0 and self._can_start(tenant):
            return self._start(tenant, queue_wait_s=0.0)
        if self._queue.depth(tenant) >= policy.max_queued_invocations:
            raise InvocationsBusy(
                BUSY_RETRY_AFTER_S,
                f"Tenant '{tenant}' already has {policy.max_queued_invocations} invocations waiting "
                f"for one of its {policy.max_concurrent_invocations} slots; retry later.",
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, self._clock(), loop.create_future())
        waiter.timer = loop.call_later(self.max_wait_s, self._expire, waiter)
        self._queue.push(tenant, waiter)
        try:
            return await waiter.future
        except BaseException:
            self._cancel_timer(waiter)
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted in the same loop iteration as the cancellation: nobody will use the slot.
                future.result().release()
            else:
                self._queue.remove(tenant, waiter)
            raise

    # -- introspection ---------------------------------------------------------------------------

    def running(self, tenant: str | None = None) -> int:
        return self._in_flight if tenant is None else self._running.get(tenant, 0)

    def queued(self, tenant: str | None = None) -> int:
        return len(self._queue) if tenant is None else self._queue.depth(tenant)

    # -- internals -------------------------------------------------------------------------------

    def _policy(self, tenant: str) -> TenantPolicy:
        return self._policies.get(tenant) or _DEFAULT_POLICY

    def _under_cap(self, tenant: str) -> bool:
        return self._running.get(tenant, 0) < self._policy(tenant).max_concurrent_invocations

    def _can_start(self, tenant: str) -> bool:
        return self._in_flight < self.max_in_flight and self._under_cap(tenant)

    def _start(self, tenant: str, *, queue_wait_s: float) -> InvocationSlot:
        self._running[tenant] = self._running.get(tenant, 0) + 1
        self._in_flight += 1
        return InvocationSlot(tenant, queue_wait_s, self._release, self._release_share)

    def _release(self, slot: InvocationSlot) -> None:
        remaining = self._running[slot.tenant] - 1
        if remaining:
            self._running[slot.tenant] = remaining
        else:
            del self._running[slot.tenant]  # keeps the map from growing with every tenant ever seen
        if slot.shared:
            self._in_flight -= 1
        self._dispatch()

    def _release_share(self, _slot: InvocationSlot) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        if self._closed:
            return
        while self._queue and self._in_flight < self.max_in_flight:
            picked = self._queue.pop(self._under_cap, lambda t: self._policy(t).weight)
            if picked is None:
                return  # every waiting tenant is at its cap
            tenant, waiter = picked
            self._cancel_timer(waiter)
            waited = max(0.0, self._clock() - waiter.enqueued_at)
            waiter.future.set_result(self._start(tenant, queue_wait_s=waited))

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self._queue.remove(waiter.tenant, waiter)
        waiter.future.set_exception(
            InvocationsBusy(
                BUSY_RETRY_AFTER_S,
                f"An invocation of tenant '{waiter.tenant}' waited {self.max_wait_s:g} s for a slot; "
                "retry later.",
            )
        )

    @staticmethod
    def _cancel_timer(waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None

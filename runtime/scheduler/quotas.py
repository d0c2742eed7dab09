"""Per-tenant rate quotas: requests per minute and tokens per minute.

Token buckets rather than a sliding window: a bucket is two floats per tenant whatever the traffic,
the time until it allows the next request follows directly from its refill rate (so `retry_after`
is exact, not a guess), and it can go into debt and take refunds, which the token quota needs
because the real cost of a request is known only when it finishes.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import QuotaExceeded, QuotaKind
from .policy import TenantPolicy

# Refill is floating point: a client that waits exactly `retry_after` must not be refused because the
# level came out at 0.9999999999.
_EPSILON = 1e-9


class TokenBucket:
    """Holds up to `per_minute` units and refills continuously at `per_minute` per 60 s.

    The level may go negative (debt): a charge is never refused for being large, only admission is
    refused while the bucket is below one unit.
    """

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._level = self.capacity
        self._stamp = now

    def level(self, now: float) -> float:
        self._refill(now)
        return self._level

    def seconds_until(self, amount: float, now: float) -> float:
        """Seconds until the level reaches `amount` (0 when it already has)."""
        self._refill(now)
        missing = amount - self._level
        return missing / self._rate if missing > _EPSILON else 0.0

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level -= amount

    def give(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level = min(self.capacity, self._level + amount)

    def resize(self, per_minute: int, now: float) -> None:
        # Keep the level (and any debt) across a config reload so that reloading is not a way to reset quotas.
        self._refill(now)
        self.capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._level = min(self._level, self.capacity)

    def _refill(self, now: float) -> None:
        # A clock that steps backwards (a misbehaving fake, say) must not drain the bucket.
        if now > self._stamp:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self._rate)
            self._stamp = now


class RateLimiter:
    """The request and token buckets of every tenant that has such a quota."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def sync(self, tenant: str, policy: TenantPolicy) -> None:
        """Create, resize or drop the tenant's buckets to match `policy`."""
        now = self._clock()
        self._sync_one(self._requests, tenant, policy.requests_per_minute, now)
        self._sync_one(self._tokens, tenant, policy.tokens_per_minute, now)

    def check(self, tenant: str, policy: TenantPolicy) -> None:
        """Raise QuotaExceeded if the tenant may not start a request now; charges nothing.

        Admission needs one request and one token available, not the whole estimate: requiring
        the estimate would refuse forever any request whose max_tokens exceeds tokens_per_minute.
        """
        self.sync(tenant, policy)
        now = self._clock()
        waits: list[tuple[float, QuotaKind]] = []
        requests = self._requests.get(tenant)
        if requests is not None:
            waits.append((requests.seconds_until(1.0, now), "requests_per_minute"))
        tokens = self._tokens.get(tenant)
        if tokens is not None:
            waits.append((tokens.seconds_until(1.0, now), "tokens_per_minute"))
        # Both must clear before a retry can succeed, so report the later of the two.
        retry_after, kind = max(waits, default=(0.0, "requests_per_minute"))
        if retry_after > 0.0:
            raise QuotaExceeded(kind, retry_after, f"{kind} quota of tenant {tenant!r} exhausted")

    def charge(self, tenant: str, tokens: int) -> None:
        """Take one request and the estimated `tokens` (possibly into debt; settled on release).

        Call right after a passing `check()`, with no await in between, so nothing can slip in.
        """
        now = self._clock()
        requests = self._requests.get(tenant)
        if requests is not None:
            requests.take(1.0, now)
        token_bucket = self._tokens.get(tenant)
        if token_bucket is not None:
            token_bucket.take(float(tokens), now)

    def settle(self, tenant: str, refund: int) -> None:
        """Correct the token charge by `refund` (negative when usage exceeded the estimate)."""
        bucket = self._tokens.get(tenant)
        if bucket is None or refund == 0:
            return
        now = self._clock()
        if refund > 0:
            bucket.give(float(refund), now)
        else:
            bucket.take(float(-refund), now)

    def forget(self, tenant: str) -> None:
        self._requests.pop(tenant, None)
        self._tokens.pop(tenant, None)

    @staticmethod
    def _sync_one(buckets: dict[str, TokenBucket], tenant: str, per_minute: int | None, now: float) -> None:
        bucket = buckets.get(tenant)
        if per_minute is None:
            buckets.pop(tenant, None)
        elif bucket is None:
            buckets[tenant] = TokenBucket(per_minute, now)
        elif bucket.capacity != per_minute:
            bucket.resize(per_minute, now)

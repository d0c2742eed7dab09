"""Per-tenant rate quotas: requests per minute and tokens per minute.

Token buckets rather than a sliding window: a bucket is two floats per tenant whatever the traffic,
the time until it allows the next request follows directly from its refill rate (so `retry_after`
is exact, not a guess), and it can go into debt and take refunds, which the token quota needs
because the real cost of a request is known only when it finishes.

In a cluster every pod holds its own buckets, sized to its share of the tenant's quota (shares.py:
from every pod's recent demand, exchanged by serving/quota_exchange.py), so that the pods together
admit the quota, not a quota each.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import QuotaExceeded, QuotaKind
from .policy import TenantPolicy
from .shares import RateKind, ShareSource

# Refill is floating point: a client that waits exactly `retry_after` must not be refused because the
# level came out at 0.9999999999.
_EPSILON = 1e-9


class TokenBucket:
    """Holds up to `per_minute` units and refills continuously at `per_minute` per 60 s.

    The level may go negative (debt): a charge is never refused for being large, only admission is
    refused while the bucket is below one unit. A share of a quota (`per_minute` scaled down) still
    holds at least one unit, or a small share could never admit anything.
    """

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = float(per_minute)
        self.capacity = max(1.0, self.per_minute)
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
        if missing <= _EPSILON:
            return 0.0
        # A zero share is a moment between two rounds of reports: a minute is a bound, not a promise.
        return missing / self._rate if self._rate > 0.0 else 60.0

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level -= amount

    def give(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level = min(self.capacity, self._level + amount)

    def resize(self, per_minute: float, now: float) -> None:
        # Keep the level (and any debt) across a config reload so that reloading is not a way to reset
        # quotas. A larger share raises the refill rate, never the level: a share that grows is no burst.
        self._refill(now)
        self.per_minute = float(per_minute)
        self.capacity = max(1.0, self.per_minute)
        self._rate = per_minute / 60.0
        self._level = min(self._level, self.capacity)

    def _refill(self, now: float) -> None:
        # A clock that steps backwards (a misbehaving fake, say) must not drain the bucket.
        if now > self._stamp:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self._rate)
            self._stamp = now


class RateLimiter:
    """The request and token buckets of every tenant that has such a quota.

    `shares`, when set (a runtime in a cluster), says which part of each quota this pod enforces and
    is told every request checked; without it each bucket holds the whole quota."""

    def __init__(self, clock: Callable[[], float], shares: ShareSource | None = None) -> None:
        self._clock = clock
        self.shares = shares
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def sync(self, tenant: str, policy: TenantPolicy) -> None:
        """Create, resize or drop the tenant's buckets to match `policy` (and this pod's share of it)."""
        now = self._clock()
        self._sync_one(
            self._requests,
            tenant,
            self._scaled(tenant, policy.requests_per_minute, "requests_per_minute"),
            now,
        )
        self._sync_one(
            self._tokens, tenant, self._scaled(tenant, policy.tokens_per_minute, "tokens_per_minute"), now
        )

    def check(self, tenant: str, policy: TenantPolicy, *, tokens: int = 0) -> None:
        """Raise QuotaExceeded if the tenant may not start a request now; charges nothing.

        Admission needs one request and one token available, not the whole estimate: requiring
        the estimate would refuse forever any request whose max_tokens exceeds tokens_per_minute.
        `tokens` (the request's estimate) is what it asks for: the demand the shares follow, refused
        or not.
        """
        if self.shares is not None and (
            policy.requests_per_minute is not None or policy.tokens_per_minute is not None
        ):
            self.shares.record(tenant, 1.0, float(tokens))
        self.sync(tenant, policy)
        now = self._clock()
        waits: list[tuple[float, QuotaKind]] = []
        requests = self._requests.get(tenant)
        if requests is not None:
            waits.append((requests.seconds_until(1.0, now), "requests_per_minute"))
        token_bucket = self._tokens.get(tenant)
        if token_bucket is not None:
            waits.append((token_bucket.seconds_until(1.0, now), "tokens_per_minute"))
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

    def _scaled(self, tenant: str, per_minute: int | None, kind: RateKind) -> float | None:
        if per_minute is None or self.shares is None:
            return per_minute
        return per_minute * min(1.0, max(0.0, self.shares.share(tenant, kind)))

    @staticmethod
    def _sync_one(buckets: dict[str, TokenBucket], tenant: str, per_minute: float | None, now: float) -> None:
        bucket = buckets.get(tenant)
        if per_minute is None:
            buckets.pop(tenant, None)
        elif bucket is None:
            buckets[tenant] = TokenBucket(per_minute, now)
        elif bucket.per_minute != per_minute:
            bucket.resize(per_minute, now)

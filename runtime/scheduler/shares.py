"""Cluster-wide rate quotas: the share of a tenant's quota this pod enforces, from every pod's demand.

Each pod keeps the tenant's token buckets itself (quotas.py: no network hop on the request path) and
sizes them to `share x quota`. The share is this pod's recent demand for the tenant divided by the
demand of every pod that reports, where a pod's demand is what it was *asked* for (requests and
estimated tokens, refused ones included), as an exponentially weighted rate over `DEMAND_WINDOW_S`.
Demand rather than what was admitted, because admitted counts follow the shares themselves and would
never move them; demand says where the traffic is.

    share = reserve / n + (1 - reserve) * own / (own + sum of the others' demand)

where n is this pod and every pod whose report is fresh, and `own` is this pod's demand as it last
reported it, not as of the request being checked: a request raises its own pod's demand the moment it
arrives, while the others learn of it only at the next report, so a share taken right then would be
high every time it matters (a quarter too high at one request a second per pod, measured). Taken at
report times, which no request chooses, every pod's figure is the same average the others see. The
reserve is spread evenly so that a pod
where the tenant is idle still refills a little and its first request is not refused; the shares of
all pods still add up to one, so the reserve costs at most `IDLE_RESERVE` of the quota (the part idle
pods hold and do not use), never an excess. Cases (`demand_share`):

- no demand anywhere: an even split, 1/n;
- no fresh report from anyone (the first interval, or a pod cut off from its peers) while discovery
  lists `known` pods: 1/known, the safe split: the total stays within the quota, but a pod taking most
  of the traffic admits only its even part of it until reports come;
- a pod that dies stops reporting: after `REPORT_TTL_S` its demand is forgotten and the others' shares
  add up to one again.

Reports are the exchange's business (serving/quota_exchange.py); this module only counts, ages and
divides, against a clock it is given, so every case is a unit test with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

#: Seconds over which a pod's demand is averaged (the time constant of its exponential decay).
DEMAND_WINDOW_S = 3.0
#: A peer's report counts for this long after it arrived; then that pod is taken for gone.
REPORT_TTL_S = 2.0
#: The part of each quota spread evenly over the pods, whatever their demand (see the module's doc).
IDLE_RESERVE = 0.05
#: Demand below this rate (units per second) is reported as none: a tenant idle for a while leaves
#: the reports instead of lingering as an ever-smaller number.
NEGLIGIBLE_RATE = 1e-3
#: The most peers one pod remembers: a namespace's pods, with room to spare; beyond it the stalest
#: report is dropped, so a peer sending under ever new names cannot grow the table.
MAX_PEERS = 1024

RateKind = Literal["requests_per_minute", "tokens_per_minute"]


@dataclass(frozen=True)
class Demand:
    """A pod's recent demand for one tenant: requests and estimated tokens asked for, per second."""

    requests: float = 0.0
    tokens: float = 0.0

    def of(self, kind: RateKind) -> float:
        return self.requests if kind == "requests_per_minute" else self.tokens


def demand_share(own: float, others: Iterable[float], *, reporters: int, known: int) -> float:
    """This pod's share in [0, 1] of one quota.

    own: this pod's demand; others: the demand of each peer with a fresh report that has any for the
    tenant; reporters: how many peers have a fresh report at all (with or without demand for it);
    known: how many pods discovery lists, this one included (for the split before any report)."""
    if reporters == 0:
        return 1.0 / max(1, known)
    n = reporters + 1
    total = own + sum(others)
    if total <= 0.0:
        return 1.0 / n
    return IDLE_RESERVE / n + (1.0 - IDLE_RESERVE) * own / total


class ShareSource(Protocol):
    """What the rate limiter asks of the cluster's view: record demand, and the share to enforce."""

    def record(self, tenant: str, requests: float, tokens: float) -> None: ...

    def share(self, tenant: str, kind: RateKind) -> float: ...


class _Ewma:
    """A rate as an exponentially decaying count: each unit adds one, the sum decays with time
    constant `DEMAND_WINDOW_S`; sum / window is the rate (a steady rate r gives r x window)."""

    __slots__ = ("_stamp", "_sum")

    def __init__(self, now: float) -> None:
        self._sum = 0.0
        self._stamp = now

    def add(self, amount: float, now: float) -> None:
        self._decay(now)
        self._sum += amount

    def rate(self, now: float) -> float:
        self._decay(now)
        return self._sum / DEMAND_WINDOW_S

    def _decay(self, now: float) -> None:
        if now > self._stamp:
            self._sum *= math.exp(-(now - self._stamp) / DEMAND_WINDOW_S)
            self._stamp = now


@dataclass
class _Report:
    received: float
    sent: float
    demand: dict[str, Demand]


@dataclass
class QuotaShares:
    """This pod's demand per tenant, the peers' last reports, and the shares they give.

    `record` is called by the rate limiter for every request it checks; `share` when it sizes a
    bucket; `report` and `receive` by the exchange. One event loop calls all of them: no locks."""

    clock: Callable[[], float]
    # Pods discovery lists (this one included), for the split before any report arrives.
    known: int = 1
    _requests: dict[str, _Ewma] = field(default_factory=dict)
    _tokens: dict[str, _Ewma] = field(default_factory=dict)
    _peers: dict[str, _Report] = field(default_factory=dict)
    # This pod's demand as of its last report: what its shares are computed from.
    _reported: dict[str, Demand] = field(default_factory=dict)

    def record(self, tenant: str, requests: float, tokens: float) -> None:
        now = self.clock()
        self._requests.setdefault(tenant, _Ewma(now)).add(requests, now)
        self._tokens.setdefault(tenant, _Ewma(now)).add(tokens, now)

    def own(self, tenant: str) -> Demand:
        now = self.clock()
        requests, tokens = self._requests.get(tenant), self._tokens.get(tenant)
        return Demand(
            requests.rate(now) if requests is not None else 0.0,
            tokens.rate(now) if tokens is not None else 0.0,
        )

    def report(self) -> dict[str, Demand]:
        """This pod's demand for every tenant it has seen lately (and forgets the long idle ones);
        from now until the next report, its shares are computed from these figures."""
        out: dict[str, Demand] = {}
        for tenant in list(self._requests):
            demand = self.own(tenant)
            if demand.requests < NEGLIGIBLE_RATE and demand.tokens < NEGLIGIBLE_RATE:
                del self._requests[tenant]
                self._tokens.pop(tenant, None)
            else:
                out[tenant] = demand
        self._reported = dict(out)
        return out

    def receive(self, pod: str, sent: float, demand: Mapping[str, Demand]) -> bool:
        """Take a peer's report (sent at `sent` by its wall clock); False when an earlier report of the
        same pod is newer (a replay or a late delivery), which is ignored."""
        now = self.clock()
        previous = self._peers.get(pod)
        if previous is not None and previous.sent >= sent:
            return False
        self._peers[pod] = _Report(now, sent, dict(demand))
        self._expire(now)
        if len(self._peers) > MAX_PEERS:
            stalest = min(self._peers, key=lambda p: self._peers[p].received)
            del self._peers[stalest]
        return True

    def fresh_peers(self) -> int:
        self._expire(self.clock())
        return len(self._peers)

    def others(self, tenant: str, kind: RateKind) -> list[float]:
        """The demand for `tenant` of each peer whose fresh report names it."""
        self._expire(self.clock())
        return [d.of(kind) for r in self._peers.values() if (d := r.demand.get(tenant)) is not None]

    def share(self, tenant: str, kind: RateKind) -> float:
        others = self.others(tenant, kind)
        own = self._reported.get(tenant, Demand()).of(kind)
        return demand_share(own, others, reporters=len(self._peers), known=self.known)

    def _expire(self, now: float) -> None:
        for pod in [p for p, r in self._peers.items() if now - r.received > REPORT_TTL_S]:
            del self._peers[pod]

"""Cluster-wide rate quotas: each pod's share of a tenant's quota from every pod's demand.

Pure logic under a fake clock (`FakeClock`, a fake at the `clock=` seam of QuotaShares and the
scheduler): pods are QuotaShares objects whose reports are handed over by hand, as the exchange
(serving/quota_exchange.py, tested with real runtimes in tests/runtime/serving/test_quota_exchange.py)
does over the internal listener."""

from __future__ import annotations

import pytest

from realm.runtime.scheduler import AdmissionScheduler, QuotaExceeded, TenantPolicy
from realm.runtime.scheduler.quotas import RateLimiter
from realm.runtime.scheduler.shares import (
    DEMAND_WINDOW_S,
    IDLE_RESERVE,
    MAX_PEERS,
    REPORT_TTL_S,
    Demand,
    QuotaShares,
    RateKind,
    demand_share,
)

RPM: RateKind = "requests_per_minute"
TPM: RateKind = "tokens_per_minute"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Cluster:
    """`n` pods sharing one fake clock; `run` drives demand and exchanges reports every half second."""

    def __init__(self, n: int) -> None:
        self.clock = FakeClock()
        self.pods = {f"pod-{i}": QuotaShares(self.clock, known=n) for i in range(n)}
        self.dead: set[str] = set()

    def exchange(self) -> None:
        live = [p for p in self.pods if p not in self.dead]
        reports = {p: self.pods[p].report() for p in live}
        for sender in live:
            for receiver in live:
                if receiver != sender:
                    self.pods[receiver].receive(sender, self.clock.now, reports[sender])

    def run(self, seconds: float, per_second: dict[str, float], tenant: str = "acme") -> None:
        """Each pod is asked for `per_second[pod]` requests of 10 tokens a second (spread evenly)."""
        steps = int(seconds * 10)
        for step in range(steps):
            self.clock.advance(0.1)
            for pod, rate in per_second.items():
                self.pods[pod].record(tenant, rate * 0.1, rate * 0.1 * 10)
            if step % 5 == 4:
                self.exchange()

    def shares(self, kind: RateKind = RPM, tenant: str = "acme") -> dict[str, float]:
        self.exchange()  # what every pod has reported and heard as of now
        return {p: s.share(tenant, kind) for p, s in self.pods.items() if p not in self.dead}


def test_a_pod_with_no_report_yet_enforces_an_even_split_of_the_pods_it_knows() -> None:
    shares = QuotaShares(FakeClock(), known=4)
    shares.record("acme", 100.0, 0.0)
    assert shares.share("acme", RPM) == 0.25


def test_a_pod_alone_enforces_the_whole_quota() -> None:
    shares = QuotaShares(FakeClock(), known=1)
    shares.record("acme", 1.0, 0.0)
    assert shares.share("acme", RPM) == 1.0


def test_balanced_demand_splits_the_quota_evenly() -> None:
    cluster = Cluster(4)
    cluster.run(10, dict.fromkeys(cluster.pods, 5.0))
    assert all(s == pytest.approx(0.25, abs=1e-9) for s in cluster.shares().values())


def test_skewed_demand_90_10_follows_the_demand_and_adds_up_to_one() -> None:
    cluster = Cluster(2)
    cluster.run(20, {"pod-0": 9.0, "pod-1": 1.0})
    shares = cluster.shares()
    # 0.9 of the quota less the idle reserve's part, plus that pod's half of the reserve.
    assert shares["pod-0"] == pytest.approx(IDLE_RESERVE / 2 + (1 - IDLE_RESERVE) * 0.9, abs=0.01)
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)


def test_the_token_quota_follows_token_demand_not_request_counts() -> None:
    clock = FakeClock()
    a, b = QuotaShares(clock, known=2), QuotaShares(clock, known=2)
    for _ in range(20):
        clock.advance(0.5)
        a.record("acme", 1.0, 900.0)  # few long requests
        b.record("acme", 1.0, 100.0)  # as many short ones
        a.receive("b", clock.now, b.report())
        b.receive("a", clock.now, a.report())
    a.report()
    assert a.share("acme", RPM) == pytest.approx(0.5, abs=0.01)
    assert a.share("acme", TPM) == pytest.approx(IDLE_RESERVE / 2 + (1 - IDLE_RESERVE) * 0.9, abs=0.01)


def test_a_dead_pods_demand_ages_out_and_the_others_shares_add_up_to_one_again() -> None:
    cluster = Cluster(3)
    cluster.run(10, dict.fromkeys(cluster.pods, 5.0))
    cluster.dead.add("pod-2")
    cluster.run(REPORT_TTL_S + 0.5, {"pod-0": 5.0, "pod-1": 5.0})
    shares = cluster.shares()
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)


def test_before_its_report_ages_out_a_dead_pod_still_holds_its_share() -> None:
    cluster = Cluster(3)
    cluster.run(10, dict.fromkeys(cluster.pods, 5.0))
    cluster.dead.add("pod-2")
    cluster.run(REPORT_TTL_S - 0.5, {"pod-0": 5.0, "pod-1": 5.0})
    assert sum(cluster.shares().values()) == pytest.approx(2 / 3, abs=0.05)


def test_a_new_pod_takes_its_part_once_its_demand_is_reported() -> None:
    cluster = Cluster(3)
    cluster.dead.add("pod-2")
    cluster.run(10, {"pod-0": 5.0, "pod-1": 5.0})
    cluster.dead.discard("pod-2")
    cluster.run(4 * DEMAND_WINDOW_S, dict.fromkeys(cluster.pods, 5.0))
    shares = cluster.shares()
    assert shares["pod-2"] == pytest.approx(1 / 3, abs=0.01)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)


def test_a_tenant_idle_everywhere_is_split_evenly() -> None:
    cluster = Cluster(4)
    cluster.run(2, dict.fromkeys(cluster.pods, 0.0))
    assert all(s == 0.25 for s in cluster.shares().values())


def test_a_pod_where_the_tenant_is_idle_keeps_a_floor_above_zero() -> None:
    cluster = Cluster(4)
    cluster.run(10, {"pod-0": 10.0, "pod-1": 0.0, "pod-2": 0.0, "pod-3": 0.0})
    shares = cluster.shares()
    assert shares["pod-1"] == pytest.approx(IDLE_RESERVE / 4)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)


def test_a_report_older_than_the_last_one_of_the_same_pod_is_ignored() -> None:
    clock = FakeClock()
    shares = QuotaShares(clock, known=2)
    assert shares.receive("b", 200.0, {"acme": Demand(requests=1.0)})
    assert not shares.receive("b", 100.0, {"acme": Demand(requests=1000.0)})
    shares.record("acme", DEMAND_WINDOW_S, 0.0)  # a rate of one per second
    shares.report()
    assert shares.share("acme", RPM) == pytest.approx(IDLE_RESERVE / 2 + (1 - IDLE_RESERVE) * 0.5)


def test_the_peer_table_is_bounded() -> None:
    clock = FakeClock()
    shares = QuotaShares(clock, known=2)
    for i in range(MAX_PEERS + 10):
        clock.advance(0.0001)
        shares.receive(f"p{i}", clock.now, {})
    assert shares.fresh_peers() == MAX_PEERS


def test_a_steady_rate_is_measured_as_that_rate() -> None:
    clock = FakeClock()
    shares = QuotaShares(clock)
    for _ in range(300):
        clock.advance(0.1)
        shares.record("acme", 0.4, 40.0)
    # Read right after a deposit, a decaying sum is above its mean by half a deposit's worth (~2 %).
    assert shares.own("acme").requests == pytest.approx(4.0, rel=0.03)
    assert shares.own("acme").tokens == pytest.approx(400.0, rel=0.03)


def test_the_share_follows_the_demand_last_reported_not_a_request_just_recorded() -> None:
    clock = FakeClock()
    a = QuotaShares(clock, known=2)
    a.receive("b", clock.now, {"acme": Demand(requests=1.0)})
    a.record("acme", DEMAND_WINDOW_S, 0.0)
    a.report()  # reported: one per second, like b
    a.record("acme", DEMAND_WINDOW_S, 0.0)  # a burst since, that b cannot know of yet
    assert a.share("acme", RPM) == pytest.approx(0.5)


def test_demand_share_with_no_demand_anywhere_is_even() -> None:
    assert demand_share(0.0, [0.0, 0.0], reporters=3, known=4) == 0.25


class FixedShare:
    """A fake at the limiter's share seam: one share for every tenant, recording what it is told."""

    def __init__(self, share: float) -> None:
        self.value = share
        self.recorded: list[tuple[str, float, float]] = []

    def record(self, tenant: str, requests: float, tokens: float) -> None:
        self.recorded.append((tenant, requests, tokens))

    def share(self, tenant: str, kind: RateKind) -> float:
        return self.value


def admitted_at_once(limiter: RateLimiter, policy: TenantPolicy) -> int:
    count = 0
    while True:
        try:
            limiter.check("acme", policy, tokens=5)
        except QuotaExceeded:
            return count
        limiter.charge("acme", 5)
        count += 1


def test_the_limiter_enforces_its_share_of_the_request_quota() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, FixedShare(0.25))
    policy = TenantPolicy(requests_per_minute=60)
    assert admitted_at_once(limiter, policy) == 15
    clock.advance(60)
    assert admitted_at_once(limiter, policy) == 15


def test_the_limiter_tells_the_shares_every_request_it_checks_refused_or_not() -> None:
    source = FixedShare(0.25)
    limiter = RateLimiter(FakeClock(), source)
    admitted_at_once(limiter, TenantPolicy(requests_per_minute=4))
    assert source.recorded == [("acme", 1.0, 5.0)] * 2


def test_a_tiny_share_still_admits_a_request() -> None:
    limiter = RateLimiter(FakeClock(), FixedShare(0.001))
    assert admitted_at_once(limiter, TenantPolicy(requests_per_minute=60)) == 1


def test_a_share_that_shrinks_while_the_tenant_is_idle_shrinks_its_bucket_at_the_next_refresh() -> None:
    clock = FakeClock()
    source = FixedShare(1.0)
    scheduler = AdmissionScheduler({"m": 1}, clock=clock)
    scheduler.set_policies({"acme": TenantPolicy(requests_per_minute=60)})
    scheduler.set_quota_shares(source)
    source.value = 0.1
    scheduler.refresh_quota_shares()
    # The bucket was full at 60; now it holds its share's 6, so a burst cannot pass the quota.
    source.value = 1.0
    admitted = 0
    with pytest.raises(QuotaExceeded):
        while True:
            scheduler.charge_only("acme", prompt_tokens=0, max_tokens=0).release(
                prompt_tokens=0, completion_tokens=0
            )
            admitted += 1
    assert admitted == 6

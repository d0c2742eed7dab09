"""The gate that pauses the operator's light watches with kopf's peering (operator/peering_gate.py).

Pure logic over peering statuses as kopf writes them; e2e/test_operator_peering.py shows the same gate
against real operators and a real apiserver.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from realm.operator.peering_gate import PeeringGate, blocking_peers, own_identity

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def peer(priority: int, seen_ago: float = 1.0, lifetime: int = 60) -> dict[str, object]:
    """A keep-alive as kopf writes it (kopf's Peer.as_dict)."""
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


def test_only_live_peers_of_higher_or_equal_priority_block() -> None:
    peers = {
        "me": peer(50),
        "higher": peer(90),
        "equal": peer(50),
        "lower": peer(10),
        "dead-higher": peer(99, seen_ago=61),
    }
    assert sorted(blocking_peers(peers, "me", 50, NOW)) == ["equal", "higher"]
    assert blocking_peers({"me": peer(50), "lower": peer(10)}, "me", 50, NOW) == []


def test_a_dead_peer_stops_blocking_exactly_at_lastseen_plus_lifetime() -> None:
    peers = {"other": peer(90, seen_ago=0, lifetime=60)}
    assert blocking_peers(peers, "me", 50, NOW + timedelta(seconds=59))
    assert not blocking_peers(peers, "me", 50, NOW + timedelta(seconds=60))


def test_an_unreadable_keepalive_counts_as_live_and_blocking() -> None:
    """Shutting the gate is the safe side: kopf would act on its own reading, the light watches wait."""
    assert blocking_peers({"odd": {"priority": "high", "lastseen": "yesterday"}}, "me", 50, NOW) == ["odd"]


def test_the_gate_stays_shut_until_every_peering_object_is_read() -> None:
    gate = PeeringGate("me", 50, ["team-a", "team-b"])
    assert not gate.open(NOW)
    gate.observe("team-a", {"me": peer(50)})
    assert not gate.open(NOW)
    gate.observe("team-b", {})
    assert gate.open(NOW)


def test_a_blocking_peer_in_any_scope_shuts_it_and_its_departure_reopens_it() -> None:
    gate = PeeringGate("me", 50, ["team-a", "team-b"])
    gate.observe("team-a", {"me": peer(50)})
    gate.observe("team-b", {"me": peer(50), "other": peer(70)})
    assert not gate.open(NOW)
    gate.observe("team-b", {"me": peer(50)})  # the other replica removed its entry (SIGTERM)
    assert gate.open(NOW)
    gate.observe("team-a", None)  # the peering object was deleted: kopf waits paused, so do we
    assert not gate.open(NOW)


def test_own_identity_is_the_pod_name_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "realm-operator-7f9c-abcde")
    assert own_identity() == "realm-operator-7f9c-abcde"
    monkeypatch.delenv("POD_ID")
    first, second = own_identity(), own_identity()
    assert first != second and "@" in first  # unique per process start, as kopf's own

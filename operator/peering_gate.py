"""Whether kopf's peering lets this replica act, for work done outside kopf's handlers.

kopf pauses its own watches when its peering object shows another live peer of higher or equal
priority; work that does not come through kopf (the light watches, lightwatch.py) must pause with it,
or a standby replica would act. The gate reads the same peering objects and applies kopf's rule
(`kopf._core.engines.peering.process_peering_event`): every live peer other than us must have a lower
priority. A peer is live until its `lastseen` plus its `lifetime`, judged at the moment of asking, so a
dead peer stops blocking exactly when kopf would resume.

The gate stays shut until every peering object has been read once; a missing one (kopf then waits
paused) keeps it shut.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import threading
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol


class Gate(Protocol):
    def open(self, now: datetime | None = None) -> bool: ...


def own_identity() -> str:
    """This replica's peering identity, chosen here (and handed to kopf) so the gate knows which entry
    is ours: the pod's name when the chart sets POD_ID, as kopf would take it; else user@host plus the
    start time and a random suffix, unique per process like kopf's own."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = str(os.getuid())
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"{user}@{socket.gethostname()}/{stamp}/{secrets.token_hex(2)}"


def _alive(info: Mapping[str, Any], now: datetime) -> bool:
    try:
        seen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
    except (KeyError, ValueError, TypeError):
        return True  # unreadable: assume live, as shutting the gate is the safe side
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen + lifetime > now


def blocking_peers(
    peers: Mapping[str, Any], identity: str, priority: int, now: datetime | None = None
) -> list[str]:
    """Live peers other than `identity` whose priority is not below ours (kopf pauses for those)."""
    now = now or datetime.now(UTC)
    out: list[str] = []
    for peer, info in peers.items():
        if peer == identity or not isinstance(info, Mapping) or not _alive(info, now):
            continue
        try:
            theirs = int(info.get("priority", 0))
        except (TypeError, ValueError):
            theirs = priority
        if theirs >= priority:
            out.append(peer)
    return out


class PeeringGate:
    """Fed the peering objects' statuses (by a watch), answers `open()` from any thread."""

    def __init__(self, identity: str, priority: int, objects: Collection[str]) -> None:
        self.identity = identity
        self.priority = priority
        self._expected = frozenset(objects)  # e.g. the namespaces whose peering object decides
        self._peers: dict[str, Mapping[str, Any]] = {}
        self._lock = threading.Lock()

    def observe(self, obj: str, status: Mapping[str, Any] | None) -> None:
        """The latest status of one peering object (None: it was deleted)."""
        with self._lock:
            if status is None:
                self._peers.pop(obj, None)
            else:
                self._peers[obj] = dict(status)

    def open(self, now: datetime | None = None) -> bool:
        with self._lock:
            if not self._expected <= set(self._peers):
                return False
            statuses = list(self._peers.values())
        return not any(blocking_peers(s, self.identity, self.priority, now) for s in statuses)


class AlwaysOpen:
    """Standalone (no peering): this replica is the only one."""

    def open(self, now: datetime | None = None) -> bool:
        return True

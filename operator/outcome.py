"""What one pass did, and how it is told: the Outcome of a pass and the Kubernetes events that report it
(one per pass that changed something, or per invalid spec; none otherwise). Also the timestamp passes
write into statuses."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

log = logging.getLogger("realm.operator")


@dataclass
class Outcome:
    """What one pass wrote (names only: never a key)."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    status_written: bool = False


def now() -> datetime:
    # metav1.Time has second precision; sub-second timestamps would not survive a round trip.
    return datetime.now(UTC).replace(microsecond=0)


def deleting(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def post(fn: Any, body: Mapping[str, Any], reason: str, message: str) -> None:
    try:
        fn(dict(body), reason=reason, message=message[:1024])
    except LookupError:
        # Outside a running operator (tests call the passes directly) there is no event queue.
        log.debug("event %s: %s", reason, message)


def normal(body: Mapping[str, Any], *, reason: str, message: str) -> None:
    kopf.event(cast(Any, dict(body)), type="Normal", reason=reason, message=message)


def warn(body: Mapping[str, Any], reason: str, message: str) -> None:
    post(kopf.warn, body, reason, message)


def report(body: Mapping[str, Any], out: Outcome, error: str | None) -> None:
    """One Kubernetes event per pass that changed something, or per invalid spec; none otherwise."""
    if error is not None and out.status_written:
        warn(body, "Invalid", error)
    changes: Sequence[str] = [*out.created, *out.applied]
    if changes:
        post(normal, body, "Applied", "applied " + ", ".join(changes))
    if out.deleted:
        post(normal, body, "Pruned", "deleted " + ", ".join(out.deleted))

"""How many replicas a Model version with `spec.autoscaling` should run: pure functions.

The load signal is what each runtime pod exports at /metrics: requests waiting for admission
(`realm_queued_requests`) plus sequences the engine is advancing (`realm_running_requests`). The
decision is HPA's rule on that signal: ceil(total load / targetQueueDepth), within [min, max]. Two
guards keep it calm: a pod whose metrics cannot be read counts as fully loaded (an unknown never scales
down), and scaling down waits `SCALE_DOWN_STABILIZATION` seconds after the last change (scaling up is
immediate: a queue is a user waiting).

The decision goes to the Model's status (`versions[].desiredReplicas`, `lastScaleTime`) and from there
into the Deployment the operator owns; the user's spec is never written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime

from realm.runtime.spec.model import Autoscaling

SCALE_DOWN_STABILIZATION = 300.0
_SAMPLE = re.compile(r"^(realm_queued_requests|realm_running_requests)(\{[^}]*\})?\s+([0-9.eE+-]+)\s*$")


def load_from_metrics(text: str) -> float:
    """Queued plus running requests in one runtime's Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            total += float(m.group(3))
    return total


def desired_replicas(
    *,
    current: int,
    loads: Sequence[float | None],
    policy: Autoscaling,
    last_change: datetime | None,
    now: datetime,
) -> int:
    """Replicas for one version. `loads` has one entry per pod (None: its metrics could not be read)."""
    lo, hi = policy.min_replicas, policy.max_replicas
    if not loads:  # no pod yet: start at the floor (or keep what runs)
        return int(max(lo, min(hi, current)))
    known = [x for x in loads if x is not None]
    unknown = len(loads) - len(known)
    load = sum(known) + unknown * policy.target_queue_depth
    want = max(lo, min(hi, math.ceil(load / policy.target_queue_depth)))
    if want < current:
        recently = last_change is not None and (now - last_change).total_seconds() < SCALE_DOWN_STABILIZATION
        if recently or unknown:
            return int(max(lo, min(hi, current)))
    return int(want)

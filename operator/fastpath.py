"""What runs ahead of kopf: light watches of Tenants and Models, gated by kopf's own peering.

A new Tenant needs its API key Secret and a new Model its Deployment; both are worth doing before kopf's
event loop, which falls seconds behind in a burst, gets to the object (see lightwatch.py for why).
These watches only *request* the work from the same queues kopf's handlers feed (the Operator's
`tenants` and `passes`, see state.py), so there is one code path for the work itself and the queues'
keying keeps the two sources from running a pass twice at once. kopf stays the source of truth:
whatever these watches miss or skip, kopf's watch delivers a moment later.

They act only while kopf's peering lets this replica act (peering_gate.py), and not at all when the
operator watches namespace patterns (kopf resolves those; a light watch per pattern cannot).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from realm.operator import models, tenants
from realm.operator.kube import KINDS, peering_kind
from realm.operator.lightwatch import LightWatch
from realm.operator.peering_gate import AlwaysOpen, PeeringGate
from realm.operator.state import Operator

log = logging.getLogger("realm.operator.fastpath")


def _is_pattern(namespace: str) -> bool:
    return any(ch in namespace for ch in "*?[!")


def start(
    op: Operator,
    namespaces: Sequence[str],
    clusterwide: bool,
    peering: str | None,
    identity: str,
    priority: int,
) -> list[LightWatch]:
    """Start the light watches (and the peering watch behind their gate); [] when they cannot apply.

    `peering` None: standalone, the gate is always open. Sets `op.gate`, which the watches' events read.
    """
    if not clusterwide and (not namespaces or any(_is_pattern(n) for n in namespaces)):
        log.info("no light watches: namespace patterns are resolved by kopf alone")
        return []
    scopes: list[str | None] = [None] if clusterwide else list(namespaces)
    watches: list[LightWatch] = []
    if peering is None:
        op.gate = AlwaysOpen()
    else:
        gate = PeeringGate(identity, priority, [s or "" for s in scopes])
        op.gate = gate

        def on_peering(kind: str, obj: Mapping[str, Any]) -> None:
            scope = str((obj.get("metadata") or {}).get("namespace") or "")
            gate.observe(scope, None if kind == "DELETED" else (obj.get("status") or {}))

        peerings = peering_kind(clusterwide)
        for scope in scopes:
            watches.append(
                LightWatch(
                    op.kube,
                    peerings.path(scope),
                    on_peering,
                    query=[("fieldSelector", f"metadata.name={peering}")],
                    initial=True,
                    name="peering-watch",
                )
            )
    for scope in scopes:
        tenant_path, model_path = KINDS["Tenant"].path(scope), KINDS["Model"].path(scope)
        watches.append(LightWatch(op.kube, tenant_path, partial(tenants.seen_early, op), name="tenant-watch"))
        watches.append(LightWatch(op.kube, model_path, partial(models.seen_early, op), name="model-watch"))
    for w in watches:
        w.start()
    return watches

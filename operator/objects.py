"""What names an object in the cluster, shared by the client (kube.py) and the planner (reconcile.py).

It lives apart from both so that neither imports the other: the client sits below the planner, and the
planner stays pure (no client).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The field manager of every write the operator makes (server-side apply owns fields under this name).
FIELD_MANAGER = "realm-operator"


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Identifies an object regardless of the API version it was read through."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    group = str(obj["apiVersion"]).rpartition("/")[0]
    meta = obj["metadata"]
    return ObjectKey(group, str(obj["kind"]), str(meta.get("namespace", "")), str(meta["name"]))

"""Which version of a model a request reaches: a model reference (`name` or `name@version`, the API's
`model` field and the ABI's `model` argument) resolved to a `ModelTarget`.

A reference with a version names it outright. A bare name picks among the model's versions by weight:
the namespace's weights (`ClusterConfig.models`, written by the operator from each Model's traffic
split) when the runtime runs in a cluster, else the versions this runtime loads (their `weight`, or
equal shares when none is set). The pick is sticky: a deterministic function of a route key (the
conversation id, or the key the client sends), so one conversation or one client stays on one
version while the weights stay the same; without a key, every request draws afresh.

The tenant's allow-list names models, not versions: a tenant that may use a model may use each of its
versions (a version is a rollout step of one model, not a model of its own).

Whether the chosen target is loaded here is the caller's question (requests.py): a version served only
by other pods is reached over the cluster's internal calls, or refused where this runtime cannot.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from realm.runtime.spec.runtime_config import ClusterConfig, TenantEntry

from .errors import InvalidRequest, ModelNotAllowed, ModelNotFound, Unavailable

MAX_REFERENCE_CHARS = 96
_NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
_VERSION = r"[a-z0-9](?:[-a-z0-9]{0,18}[a-z0-9])?"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?:@(?P<version>{_VERSION}))?")


@dataclass(frozen=True, order=True)
class ModelTarget:
    """One version of one model: what a request is served by."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_reference(reference: str) -> tuple[str, str | None]:
    """A model reference's name and version (None: any version, by weight). InvalidRequest (400) for
    anything that is not `name` or `name@version` in the names' alphabet."""
    if len(reference) > MAX_REFERENCE_CHARS:
        raise InvalidRequest(
            f"The model reference has {len(reference)} characters; at most {MAX_REFERENCE_CHARS} are "
            "accepted.",
            code="invalid_model",
            param="model",
        )
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise InvalidRequest(
            f"The model reference {reference!r} is not `name` or `name@version` (lowercase letters, "
            "digits, `.`, `_` and `-`).",
            code="invalid_model",
            param="model",
        )
    return match["name"], match["version"]


def weighted_versions(
    name: str, loaded: Mapping[ModelTarget, int | None], cluster: ClusterConfig | None
) -> dict[str, int]:
    """The version -> weight table a bare `name` picks from: the cluster's weights when the cluster
    lists the model, else the loaded versions' (equal shares when none has a weight)."""
    if cluster is not None:
        table = {m.version: m.weight for m in cluster.models if m.name == name}
        if table:
            return table
    local = {t.version: w for t, w in loaded.items() if t.name == name}
    if all(w is None for w in local.values()):
        return dict.fromkeys(local, 1)
    return {v: w or 0 for v, w in local.items()}


def pick_version(weights: Mapping[str, int], route_key: str | None, *, salt: str) -> str | None:
    """A version drawn in proportion to `weights` (None when every weight is 0). With a route key the
    draw is a hash of it (salted with the model's name, so one key does not land on the same share of
    every model), identical on every pod; without one, random."""
    table = sorted((v, w) for v, w in weights.items() if w > 0)
    total = sum(w for _, w in table)
    if total == 0:
        return None
    if route_key is None:
        point = random.randrange(total)  # a traffic split, not a secret
    else:
        digest = hashlib.sha256(f"{salt}\0{route_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    for version, weight in table:
        if point < weight:
            return version
        point -= weight
    raise AssertionError("unreachable: point < total")


def resolve_target(
    reference: str,
    *,
    tenant: TenantEntry,
    route_key: str | None,
    loaded: Mapping[ModelTarget, int | None],
    cluster: ClusterConfig | None,
) -> ModelTarget:
    """The version `reference` reaches for `tenant`.

    `loaded`: the versions this runtime loads, with their local weights (RuntimeConfig.models);
    `cluster`: the namespace's versions wherever they run (None outside a cluster). Raises
    InvalidRequest (a malformed reference), ModelNotFound (no such model, or no such version of it),
    ModelNotAllowed (the tenant may not use the model), Unavailable (no version takes traffic)."""
    name, version = parse_reference(reference)
    known = _known_versions(name, loaded, cluster)
    if not known:
        raise ModelNotFound(f"The model '{name}' does not exist.", code="model_not_found", param="model")
    if name not in tenant.spec.allowed_models:
        raise ModelNotAllowed(
            f"Tenant '{tenant.name}' may not use the model '{name}'.",
            code="model_not_allowed",
            param="model",
        )
    if version is not None:
        if version not in known:
            raise ModelNotFound(
                f"The model '{name}' has no version '{version}' (it has {', '.join(sorted(known))}).",
                code="model_not_found",
                param="model",
            )
        return ModelTarget(name, version)
    chosen = pick_version(weighted_versions(name, loaded, cluster), route_key, salt=name)
    if chosen is None:
        raise Unavailable(
            f"No version of the model '{name}' takes traffic now; name one as '{name}@<version>'.",
            code="no_version_weighted",
        )
    return ModelTarget(name, chosen)


def _known_versions(name: str, loaded: Collection[ModelTarget], cluster: ClusterConfig | None) -> set[str]:
    remote: Iterable[str] = (m.version for m in cluster.models if m.name == name) if cluster else ()
    return {t.version for t in loaded if t.name == name} | set(remote)

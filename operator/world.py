"""What the operator knows without asking the API: records built by kopf indexes, and readers over them.

Why: a Model's pass needs every Tenant of its namespace and each tenant's key hash. Listing Tenants and
reading one Secret per tenant on every pass costs O(tenants) requests per pass, and O(tenants²) when a
thousand Tenants arrive at once. kopf's indexes (`@kopf.index`) keep these records in memory from the
watch streams, and kopf populates every index before any handler runs, so a pass never publishes a
partial tenant list after a restart.

The records are immutable and small: a parsed spec, deletion state, what the status says it published,
and for Secrets only the sha256 of each entry (the key itself never enters the operator's memory beyond
the watch event).

This is the operator's one way of observing Tenants, Models, Pipelines and key Secrets: passes read the
indexes (`Indexes`), never lists; a tool or a test running a pass outside a running operator fills the
same shapes from one listing (`listed`).

kopf mutates its indexes on the event loop while passes read them from worker threads; a read that
races a mutation raises RuntimeError (dict changed size), so readers copy and retry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from realm.operator.builders import LABEL_TENANT, api_key_secret_ref
from realm.operator.kube import Kube
from realm.operator.reconcile import MODULE_READY, RUNNABLE, PipelineView, TenantView, is_ready, parse_spec
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.pool import Fit, ModelPoolSpec, fit
from realm.runtime.spec.tenant import TenantSpec

T = TypeVar("T")
Index = Mapping[Any, Iterable[Any]]  # kopf's: key -> Store of the values its index handler returned
# Secret entries longer than this are not API keys (certificates, kubeconfigs): not worth hashing.
MAX_HASHED_ENTRY = 4096


@dataclass(frozen=True)
class TenantRecord:
    name: str
    uid: str
    spec: TenantSpec | None  # None when the spec does not parse (the Tenant's own pass reports why)
    deleting: bool
    published_to: tuple[str, ...]  # from status: the Models it was last published to
    reconciled: bool  # it has a status: its own pass has run at least once
    secret: str = ""  # the name of its API key Secret (managed or referenced)
    # Its spec pins a module in a ConfigMap whose bytes its status does not (yet) call verified: the
    # ConfigMap is not watched, so the Models' timers ask its pass to look again.
    module_unverified: bool = False

    def allows(self, model: str) -> bool:
        return self.spec is not None and model in self.spec.allowed_models

    def allows_any(self, names: Collection[str]) -> bool:
        return self.spec is not None and any(n in names for n in self.spec.allowed_models)


class SpecCache:
    """Parsed Tenant specs by (uid, generation): the spec changes only with the generation, yet every
    Tenant event (its status echoes included) is indexed, handled and filtered (kopf's `when=`) once each.
    Read from kopf's loop and the light watches' threads."""

    def __init__(self, max_entries: int = 8192) -> None:
        self._parsed: dict[tuple[str, int], TenantSpec | None] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def tenant_spec(self, meta: Mapping[str, Any], spec: Mapping[str, Any] | None) -> TenantSpec | None:
        """The Tenant's parsed spec (None when invalid), parsed once per (uid, generation)."""
        uid, generation = meta.get("uid"), meta.get("generation")
        key = (str(uid), generation) if uid and isinstance(generation, int) else None
        if key is not None:
            with self._lock:
                if key in self._parsed:
                    return self._parsed[key]
        out = parse_tenant_spec(spec)
        if key is not None:
            with self._lock:
                if len(self._parsed) >= self._max:
                    self._parsed.clear()  # crude, but bounded; a miss only costs a parse
                self._parsed[key] = out
        return out


def parse_tenant_spec(spec: Mapping[str, Any] | None) -> TenantSpec | None:
    parsed, _ = parse_spec(spec, TenantSpec)
    return parsed if isinstance(parsed, TenantSpec) else None


def tenant_record(
    name: str,
    uid: str,
    parsed: TenantSpec | None,
    meta: Mapping[str, Any],
    status: Mapping[str, Any] | None,
) -> TenantRecord:
    return TenantRecord(
        name=name,
        uid=uid,
        spec=parsed,
        deleting=bool(meta.get("deletionTimestamp")),
        published_to=tuple((status or {}).get("publishedTo") or ()),
        reconciled=bool(status),
        secret=api_key_secret_ref(name, parsed).name,
        module_unverified=parsed is not None
        and parsed.wasm is not None
        and parsed.wasm.config_map is not None
        and not _condition_true(status, MODULE_READY),
    )


def _condition_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return bool(c.get("status") == "True")
    return False


@dataclass(frozen=True)
class ModelRecord:
    name: str
    deleting: bool
    ready: bool  # the Ready condition of its status
    # Its parsed spec (None when invalid): where it runs (its pool) and its traffic split make every
    # runtime config's `cluster`, and a pool's pass builds its members' configs from it.
    spec: ModelSpec | None = None
    uid: str = ""

    @property
    def pool(self) -> str | None:
        return self.spec.pool if self.spec is not None else None


def model_record(
    name: str,
    meta: Mapping[str, Any],
    status: Mapping[str, Any] | None,
    spec: Mapping[str, Any] | None = None,
) -> ModelRecord:
    parsed, _ = parse_spec(spec, ModelSpec)
    return ModelRecord(
        name,
        bool(meta.get("deletionTimestamp")),
        is_ready(status),
        parsed if isinstance(parsed, ModelSpec) else None,
        str(meta.get("uid") or ""),
    )


@dataclass(frozen=True)
class PoolRecord:
    name: str
    deleting: bool
    spec: ModelPoolSpec | None  # None when invalid
    uid: str = ""


def pool_record(name: str, meta: Mapping[str, Any], spec: Mapping[str, Any] | None) -> PoolRecord:
    parsed, _ = parse_spec(spec, ModelPoolSpec)
    return PoolRecord(
        name,
        bool(meta.get("deletionTimestamp")),
        parsed if isinstance(parsed, ModelPoolSpec) else None,
        str(meta.get("uid") or ""),
    )


def pipeline_view(
    name: str,
    spec: Mapping[str, Any] | None,
    meta: Mapping[str, Any],
    status: Mapping[str, Any] | None = None,
) -> PipelineView:
    # A deep, plain copy: the record outlives the event it came from.
    raw = json.loads(json.dumps(dict(spec))) if spec is not None else None
    conditions = (status or {}).get("conditions") or []
    written = next(
        (c.get("status") for c in conditions if isinstance(c, Mapping) and c.get("type") == RUNNABLE), None
    )
    runnable = written if isinstance(written, str) else None
    return PipelineView(name, raw, bool(meta.get("deletionTimestamp")), runnable)


def secret_hashes(body: Mapping[str, Any]) -> dict[str, str]:
    """sha256 (hex) of each decodable entry of a Secret: what `api_key_hash` computes, for every key."""
    out: dict[str, str] = {}
    for key, raw in (body.get("data") or {}).items():
        if not isinstance(raw, str) or len(raw) > MAX_HASHED_ENTRY:
            continue
        try:
            out[key] = hashlib.sha256(base64.b64decode(raw, validate=True).decode().encode()).hexdigest()
        except (binascii.Error, UnicodeDecodeError):
            continue
    return out


@dataclass(frozen=True)
class SecretRecord:
    """A key Secret as the index keeps it: the Tenant its `realm.dev/tenant` label names (the one Tenant
    that may use it) and the sha256 of each entry."""

    owner: str
    hashes: Mapping[str, str]


def secret_record(body: Mapping[str, Any]) -> SecretRecord:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return SecretRecord(str(labels.get(LABEL_TENANT) or ""), secret_hashes(body))


def _stable(read: Callable[[], T]) -> T:
    for _ in range(8):
        try:
            return read()
        except RuntimeError:  # the loop changed the index while this thread copied it
            continue
    return read()


def records_in(index: Mapping[str, Iterable[T]], namespace: str) -> list[T]:
    """The records an index keeps for a namespace (Tenants, Models or Pipelines)."""

    def read() -> list[T]:
        store = index.get(namespace)
        return list(store) if store is not None else []

    return _stable(read)


def tenants_in(index: Mapping[str, Iterable[TenantRecord]], namespace: str) -> list[TenantRecord]:
    return records_in(index, namespace)


def _secret(
    index: Mapping[tuple[str, str], Iterable[SecretRecord]], namespace: str, name: str
) -> SecretRecord | None:
    def read() -> list[SecretRecord]:
        store = index.get((namespace, name))
        return list(store) if store is not None else []

    found = _stable(read)
    return found[0] if found else None


def secret_entry_hash(
    index: Mapping[tuple[str, str], Iterable[SecretRecord]], namespace: str, name: str, key: str
) -> tuple[bool, str | None]:
    """(known, hash): known is False when the index holds no such Secret (yet), so callers may ask the
    API, e.g. right after creating it, before the watch event arrived."""
    record = _secret(index, namespace, name)
    if record is None:
        return False, None
    return True, record.hashes.get(key)


def secret_owner(
    index: Mapping[tuple[str, str], Iterable[SecretRecord]], namespace: str, name: str
) -> str | None:
    """The Tenant a key Secret's label names ("" when the label is empty); None when the index lacks it."""
    record = _secret(index, namespace, name)
    return None if record is None else record.owner


# The indexes and what a pass reads from them -------------------------------------------------------------


@dataclass(frozen=True)
class Indexes:
    """kopf's indexes (handed to the startup handler, live from then on), or a listing of the same shape
    (`listed`, for tools and tests that run a pass outside a running operator)."""

    tenants: Index  # namespace -> Store[TenantRecord]
    secrets: Index  # (namespace, name) -> Store[SecretRecord], labelled key Secrets only
    models: Index  # namespace -> Store[ModelRecord]
    pipelines: Index  # namespace -> Store[PipelineView]
    pools: Index = field(default_factory=dict)  # namespace -> Store[PoolRecord]

    @classmethod
    def empty(cls) -> Indexes:
        return cls({}, {}, {}, {}, {})


def listed(k: Kube, namespace: str) -> Indexes:
    """The namespace's records read from the API once, in the shape kopf's indexes keep them: a pass run
    by a tool or a test reads the world the same way the operator does."""
    tenants = [
        tenant_record(
            t["metadata"]["name"],
            t["metadata"].get("uid", ""),
            parse_tenant_spec(t.get("spec")),
            t["metadata"],
            t.get("status"),
        )
        for t in k.list("Tenant", namespace)
    ]
    models = [
        model_record(m["metadata"]["name"], m["metadata"], m.get("status"), m.get("spec"))
        for m in k.list("Model", namespace)
    ]
    pools = [
        pool_record(p["metadata"]["name"], p["metadata"], p.get("spec"))
        for p in k.list("ModelPool", namespace)
    ]
    pipelines = [
        pipeline_view(p["metadata"]["name"], p.get("spec"), p["metadata"], p.get("status"))
        for p in k.list("Pipeline", namespace)
    ]
    secrets = {
        (namespace, s["metadata"]["name"]): [secret_record(s)]
        for s in k.list("Secret", namespace)
        if LABEL_TENANT in ((s.get("metadata") or {}).get("labels") or {})  # what kopf's watch selects
    }
    return Indexes(
        {namespace: tenants}, secrets, {namespace: models}, {namespace: pipelines}, {namespace: pools}
    )


def tenant_views(
    indexes: Indexes, namespace: str, serving: Collection[str] | None = None
) -> list[TenantView]:
    """Every Tenant in the namespace with its key's hash. With `serving` (what a Model's pods serve: its
    name and its embedding models'), only the Tenants allowed to use one of those: a Model's config
    lists no others, nor their pipelines."""
    views: list[TenantView] = []
    for rec in tenants_in(indexes.tenants, namespace):
        if serving is not None and not rec.allows_any(serving):
            continue
        ref = api_key_secret_ref(rec.name, rec.spec)
        # A Secret the index lacks does not exist, or was created a moment ago: its watch event will
        # request this pass again (see tenants.secret_changed), so no read is needed here.
        _, digest = secret_entry_hash(indexes.secrets, namespace, ref.name, ref.key)
        if secret_owner(indexes.secrets, namespace, ref.name) != rec.name:
            digest = None  # another Tenant's Secret (or no one's): no key is published for this one
        views.append(TenantView(rec.name, rec.spec, rec.deleting, digest, namespace, rec.uid or None))
    return views


def pipelines_in(indexes: Indexes, namespace: str) -> list[PipelineView]:
    return records_in(indexes.pipelines, namespace)


def models_in(indexes: Indexes, namespace: str) -> dict[str, bool]:
    """Models in the namespace that are not being deleted, with whether each is Ready."""
    records: list[ModelRecord] = records_in(indexes.models, namespace)
    return {m.name: m.ready for m in records if not m.deleting}


def names_served_by(indexes: Indexes, namespace: str, model: str) -> set[str]:
    """What a Tenant may name to be published to `model`'s pods: its name and its embedding models'."""
    return {model} | {n for n, m in served_names(indexes, namespace).items() if m == model}


def served_names(indexes: Indexes, namespace: str) -> dict[str, str]:
    """What a Tenant's allowedModels may name in the namespace, each with the Model whose pods serve it:
    every Model (not being deleted) by its own name, and the embedding models it declares. A name two
    Models claim is the first's, by name, a Model's own name before any embedding model's."""
    records = model_records(indexes, namespace)
    out = {m.name: m.name for m in records}
    for m in records:
        for e in m.spec.embeddings if m.spec is not None else []:
            out.setdefault(e.name, m.name)
    return out


def tenant_specs(indexes: Indexes, namespace: str) -> dict[str, TenantSpec | None]:
    """Tenants not being deleted, with their parsed spec (None when invalid)."""
    return {t.name: t.spec for t in tenants_in(indexes.tenants, namespace) if not t.deleting}


def model_records(indexes: Indexes, namespace: str) -> list[ModelRecord]:
    """The namespace's Models that are not being deleted, sorted by name."""
    records: list[ModelRecord] = records_in(indexes.models, namespace)
    return sorted((m for m in records if not m.deleting), key=lambda m: m.name)


def placed_models(indexes: Indexes, namespace: str) -> list[tuple[str, ModelSpec]]:
    """Every Model of the namespace with a valid spec, not being deleted, sorted by name: what the
    runtime configs' `cluster` lists (builders.cluster_config)."""
    return [(m.name, m.spec) for m in model_records(indexes, namespace) if m.spec is not None]


def members_of(indexes: Indexes, namespace: str, pool: str) -> list[ModelRecord]:
    """The Models (valid, not being deleted) that name `pool`, sorted by name."""
    return [m for m in model_records(indexes, namespace) if m.spec is not None and m.spec.pool == pool]


def pools_in(indexes: Indexes, namespace: str) -> dict[str, PoolRecord]:
    """The namespace's ModelPools that are not being deleted, by name."""
    records: list[PoolRecord] = records_in(indexes.pools, namespace)
    return {p.name: p for p in records if not p.deleting}


def pool_fit(indexes: Indexes, namespace: str, pool: str) -> tuple[bool, Fit | None]:
    """(whether a ModelPool of that name exists, its fit verdict: None when its spec is invalid), from
    the indexes alone: the pool's pass and its members' passes reach the same verdict."""
    record = pools_in(indexes, namespace).get(pool)
    if record is None:
        return False, None
    if record.spec is None:
        return True, None
    members = members_of(indexes, namespace, pool)
    return True, fit(record.spec, [(m.name, m.spec) for m in members if m.spec is not None])

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from realm.operator.builders import LABEL_TENANT, api_key_secret_ref
from realm.operator.kube import Kube
from realm.operator.reconcile import PipelineView, TenantView, is_ready, parse_spec
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

    def allows(self, model: str) -> bool:
        return self.spec is not None and model in self.spec.allowed_models


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
    )


@dataclass(frozen=True)
class ModelRecord:
    name: str
    deleting: bool
    ready: bool  # the Ready condition of its status


def model_record(name: str, meta: Mapping[str, Any], status: Mapping[str, Any] | None) -> ModelRecord:
    return ModelRecord(name, bool(meta.get("deletionTimestamp")), is_ready(status))


def pipeline_view(name: str, spec: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> PipelineView:
    # A deep, plain copy: the record outlives the event it came from.
    raw = json.loads(json.dumps(dict(spec))) if spec is not None else None
    return PipelineView(name, raw, bool(meta.get("deletionTimestamp")))


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

    @classmethod
    def empty(cls) -> Indexes:
        return cls({}, {}, {}, {})


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
        model_record(m["metadata"]["name"], m["metadata"], m.get("status"))
        for m in k.list("Model", namespace)
    ]
    pipelines = [
        pipeline_view(p["metadata"]["name"], p.get("spec"), p["metadata"])
        for p in k.list("Pipeline", namespace)
    ]
    secrets = {
        (namespace, s["metadata"]["name"]): [secret_record(s)]
        for s in k.list("Secret", namespace)
        if LABEL_TENANT in ((s.get("metadata") or {}).get("labels") or {})  # what kopf's watch selects
    }
    return Indexes({namespace: tenants}, secrets, {namespace: models}, {namespace: pipelines})


def tenant_views(indexes: Indexes, namespace: str, model: str | None = None) -> list[TenantView]:
    """Every Tenant in the namespace with its key's hash. With `model`, only the Tenants allowed to use
    it: a Model's config lists no others, nor their pipelines."""
    views: list[TenantView] = []
    for rec in tenants_in(indexes.tenants, namespace):
        if model is not None and not rec.allows(model):
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


def tenant_specs(indexes: Indexes, namespace: str) -> dict[str, TenantSpec | None]:
    """Tenants not being deleted, with their parsed spec (None when invalid)."""
    return {t.name: t.spec for t in tenants_in(indexes.tenants, namespace) if not t.deleting}

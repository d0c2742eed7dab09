"""The Tenant kind: its API key Secret, its status, its KV snapshots, and the requests its changes make.

What is written: a Secret `<tenant>-api-key` (only when the spec names none), created once with a random
key, owned by the Tenant so the garbage collector removes it; the Tenant's status subresource. A Tenant's
place in the runtime configs is the Model passes' to write: its changes request them.

Tenants have no kopf create/update/resume handlers. Every watch event (`watch_event`, including the
listing at start) requests the Tenant's pass from `op.tenants`, a keyed two-lane queue (workqueue.py):
creating a missing API key is urgent and runs before any status is written, so a burst of new Tenants
gets its keys first. Without kopf's changing handlers kopf writes no annotation to a Tenant (only those
with a cleanup finalizer get one). A light watch (fastpath.py) requests a new Tenant's key from the same
queue, ahead of kopf (`seen_early`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import kopf

from realm.operator import identity, snapshots, vectors, world
from realm.operator.builders import (
    LABEL_TENANT,
    SecretRef,
    api_key_secret,
    api_key_secret_ref,
    shared_store_bucket,
)
from realm.operator.options import platform_refusal
from realm.operator.outcome import Outcome, deleting, normal, now, post, report, warn
from realm.operator.pipelines import refresh_pipelines
from realm.operator.reconcile import (
    KEY_NOT_FOUND,
    SECRET_NOT_FOUND,
    SECRET_NOT_LABELLED,
    SECRET_OF_ANOTHER_TENANT,
    KeyState,
    api_key_hash,
    models_to_republish,
    module_state,
    parse_spec,
    status_patch,
    tenant_status,
)
from realm.operator.state import Operator, TenantKey
from realm.runtime.serving.module_sources import CONFIGMAP_KEY
from realm.runtime.spec.tenant import TenantSpec

# See models.objects_log: what the light watches set going, per object.
objects_log = logging.getLogger("realm.operator.objects")


def ensure_key(op: Operator, body: Mapping[str, Any], spec: TenantSpec | None, out: Outcome) -> KeyState:
    """The Tenant's key: known from the Secret index (or a Secret this operator just created), else,
    when managed, created now."""
    k = op.kube
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    ref = api_key_secret_ref(name, spec)
    known, digest = world.secret_entry_hash(op.indexes.secrets, namespace, ref.name, ref.key)
    fresh = op.memory.fresh_secrets.get((namespace, ref.name))
    if not known and fresh is not None:
        known, digest = True, fresh.get(ref.key)
    if not known and ref.managed and not deleting(body):
        # A fresh random key, created once: an existing Secret is never overwritten (that would
        # rotate the key under the tenant's feet). The key itself goes nowhere but the Secret.
        manifest = api_key_secret(name, namespace, meta["uid"], ref, "sk-realm-" + secrets.token_urlsafe(32))
        created = k.create(manifest)
        if created is not None:
            out.created.append(f"Secret/{ref.name}")
            op.memory.fresh_secrets[(namespace, ref.name)] = world.secret_hashes(created)
        else:  # someone was first (a previous pass whose watch event has not arrived yet)
            created = k.get("Secret", namespace, ref.name)
            if created is not None:
                labelled = ((created.get("metadata") or {}).get("labels") or {}).get(LABEL_TENANT)
                if labelled is None:
                    return _unseen_secret(op, namespace, name, ref)
                if labelled != name:
                    return _not_owned(name, ref, labelled)
        known, digest = created is not None, api_key_hash(created, ref.key)
    if not known:
        return _unseen_secret(op, namespace, name, ref)
    owner = world.secret_owner(op.indexes.secrets, namespace, ref.name)
    if owner is not None and owner != name:
        return _not_owned(name, ref, owner)
    if digest is None:
        return KeyState(ref.name, KEY_NOT_FOUND, f"Secret {ref.name} has no key {ref.key}")
    return KeyState(ref.name)


def _label_hint(name: str, ref: SecretRef) -> str:
    return f"kubectl label secret {ref.name} {LABEL_TENANT}={name} --overwrite"


def _unseen_secret(op: Operator, namespace: str, name: str, ref: SecretRef) -> KeyState:
    """A Secret the index lacks: absent, or present without the label the operator's watch selects."""
    if op.kube.get("Secret", namespace, ref.name) is None:
        return KeyState(ref.name, SECRET_NOT_FOUND, f"Secret {ref.name} not found")
    return KeyState(
        ref.name,
        SECRET_NOT_LABELLED,
        f"Secret {ref.name} lacks the label {LABEL_TENANT}={name}: the operator reads only key Secrets "
        f"labelled with their Tenant's name ({_label_hint(name, ref)})",
    )


def _not_owned(name: str, ref: SecretRef, owner: str) -> KeyState:
    if not owner:
        return KeyState(
            ref.name,
            SECRET_NOT_LABELLED,
            f"Secret {ref.name} has an empty {LABEL_TENANT} label ({_label_hint(name, ref)})",
        )
    return KeyState(
        ref.name,
        SECRET_OF_ANOTHER_TENANT,
        f"Secret {ref.name} is labelled {LABEL_TENANT}={owner}: it holds Tenant {owner}'s key, and a key "
        "serves one Tenant only; give this Tenant a Secret of its own, labelled with its name",
    )


def reconcile_tenant(
    op: Operator,
    namespace: str,
    name: str,
    body: Mapping[str, Any] | None = None,
    created: Sequence[str] = (),
) -> Outcome:
    """Ensure the tenant's key, request the pass of every Model it is (or was) published to, then its
    status.

    A Tenant being deleted is left out of every runtime config (world.tenant_views skips it), so the same
    pass serves the delete handler. `body` is the object as kopf just saw it (saves a read); absent, it is
    read. `created` names what an earlier step created for this Tenant (its key, see `tenant_pass`), so
    this pass's event reports it.
    """
    k = op.kube
    out = Outcome(created=list(created))
    if body is None:
        body = k.get("Tenant", namespace, name)
    if body is None:
        return out
    meta = body["metadata"]
    spec, error = parse_spec(body.get("spec"), TenantSpec)
    tspec = spec if isinstance(spec, TenantSpec) else None
    if tspec is not None and error is None:
        # A snapshot location or an egress `*` host the platform does not allow: refused like an
        # invalid spec (the Model passes leave such a Tenant out of every runtime config).
        error = platform_refusal(tspec, op.config)
    key = ensure_key(op, body, tspec, out)

    served = world.served_names(op.indexes, namespace)
    allowed = tspec.allowed_models if tspec is not None else []
    previous = (body.get("status") or {}).get("publishedTo") or []
    for model in sorted({served[m] for m in models_to_republish(allowed, previous) if m in served}):
        op.request_model(namespace, model)
    if deleting(body):
        return out  # no status for an object on its way out
    held = tspec.wasm.config_map if tspec is not None and tspec.wasm is not None else None
    config_map = k.get("ConfigMap", namespace, held) if held and op.config.modules_dir is not None else None
    status = tenant_status(
        previous=body.get("status"),
        generation=int(meta.get("generation") or 0),
        now=now(),
        spec_error=error,
        key=key,
        allowed=allowed,
        existing_models=served,
        published_to=sorted({served[m] for m in allowed if m in served}) if error is None else [],
        module=module_state(tspec, op.config.modules_dir, config_map, CONFIGMAP_KEY),
    )
    patch = status_patch(body.get("status"), status)
    if patch is not None:
        out.status_written = k.patch_status("Tenant", namespace, name, patch) is not None
    report(body, out, error)
    return out


def tenant_pass(op: Operator, key: TenantKey, urgent: bool) -> None:
    """The Tenant queue's work: urgent, only its missing API key (then a full pass is requested, behind
    every other urgent one); otherwise the whole of `reconcile_tenant`. A Tenant gone only refreshes its
    pipelines' statuses (the event that saw it go already unpublished it)."""
    namespace, name = key
    memory = op.memory
    body = memory.latest.get(key)
    if body is None and urgent:
        body = memory.early.get(key)
    if body is None:
        if key not in memory.early:
            refresh_pipelines(op, namespace, tenant=name)
        return  # seen only by the light watch yet: kopf's event requests the full pass
    if urgent:
        meta = body.get("metadata", {})
        out = Outcome()
        ensure_key(op, body, op.specs.tenant_spec(meta, body.get("spec")), out)
        if out.created:
            memory.created.setdefault(key, []).extend(out.created)
        op.tenants.request(key)
        return
    reconcile_tenant(op, namespace, name, body=body, created=memory.created.pop(key, ()))
    refresh_pipelines(op, namespace, tenant=name)


def refresh_tenants(op: Operator, namespace: str, model: str, exists: bool) -> None:
    """Request the passes of the Tenants a Model's arrival, change or departure changes (ModelNotFound
    turns True once it exists): those allowed to use what it serves (its name, its embedding models')
    and not published to it, or those published to it once it is gone."""
    serving = world.names_served_by(op.indexes, namespace, model)
    for r in world.tenants_in(op.indexes.tenants, namespace):
        # A Tenant without a status yet has its own pass queued already.
        published = model in r.published_to
        if r.reconciled and (
            (exists and r.allows_any(serving) and not published) or (not exists and published)
        ):
            op.tenants.request((namespace, r.name))


def refresh_modules(op: Operator, namespace: str) -> None:
    """Request the passes of the Tenants whose ConfigMap-held module is not verified yet: the operator
    does not watch those ConfigMaps, so the Models' timers have their Tenants look again."""
    for r in world.tenants_in(op.indexes.tenants, namespace):
        if r.module_unverified and r.reconciled and not r.deleting:
            op.tenants.request((namespace, r.name))


def wants_pass(type: str | None, body: Mapping[str, Any]) -> bool:
    """Whether a Tenant's watch event calls for a pass: when first seen (a create, or the listing at the
    operator's start: level-based, whatever happened while it was down), and when its spec changed since
    the status was written. The echo of the operator's own status write does not."""
    if type in (None, "ADDED"):
        return True
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") != body.get("metadata", {}).get("generation"))


def key_missing(op: Operator, namespace: str, name: str, spec: TenantSpec | None) -> bool:
    """A managed key the index does not know: creating it is the urgent part of a Tenant's pass."""
    ref = api_key_secret_ref(name, spec)
    if not ref.managed or (namespace, ref.name) in op.memory.fresh_secrets:
        return False
    return not world.secret_entry_hash(op.indexes.secrets, namespace, ref.name, ref.key)[0]


# What Tenant and key Secret events request ------------------------------------------------------------


def watch_event(op: Operator, namespace: str, name: str, type: str | None, body: Mapping[str, Any]) -> None:
    """Every Tenant change goes through here: it requests the Tenant's pass, urgently when its managed key
    is missing. A Tenant gone (or on its way out) leaves the runtime configs at once."""
    key = (namespace, name)
    memory = op.memory
    meta = body.get("metadata", {})
    memory.early.pop(key, None)
    if type == "DELETED":
        memory.latest.pop(key, None)
        memory.created.pop(key, None)
    else:
        memory.latest[key] = body
    spec = op.specs.tenant_spec(meta, body.get("spec"))
    if type == "DELETED" or meta.get("deletionTimestamp"):
        allowed = spec.allowed_models if spec is not None else []
        published = (body.get("status") or {}).get("publishedTo") or []
        for model in models_to_republish(allowed, published):
            op.request_model(namespace, model)
        if type == "DELETED":
            op.tenants.request(key)
        return
    if wants_pass(type, body):
        op.tenants.request(key, urgent=key_missing(op, namespace, name, spec))


def secret_changed(op: Operator, namespace: str, name: str, type: str | None) -> None:
    """A key Secret changed (rotated, deleted, recreated): republish its tenants' Models right away."""
    op.memory.fresh_secrets.pop((namespace, name), None)  # the index has seen it (kopf indexes first)
    if type not in ("ADDED", "MODIFIED", "DELETED"):
        return
    # A scan, but of names computed once per Tenant generation (a second kopf index would cost more: every
    # index runs on every Tenant event, and kopf hands every index to every handler).
    for rec in world.tenants_in(op.indexes.tenants, namespace):
        if rec.secret != name:
            continue
        if rec.spec is not None:
            for model in rec.spec.allowed_models:
                op.request_model(namespace, model)
        if type == "DELETED" and not rec.deleting:  # a managed key is created again at once
            op.tenants.request((namespace, rec.name), urgent=True)


def seen_early(op: Operator, type: str, obj: Mapping[str, Any]) -> None:
    """A light watch's Tenant event: a new Tenant whose managed key is missing gets its urgent step now,
    before kopf's loop reaches the event."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not (namespace and name):
        return
    key = (namespace, name)
    if type == "DELETED":
        op.memory.early.pop(key, None)
        return
    if type != "ADDED" or meta.get("deletionTimestamp"):
        return
    if not op.may_act_early():
        objects_log.info("Tenant %s/%s: left to kopf (this replica may not act now)", namespace, name)
        return
    # Whether this watch or kopf's sees a new object first is a race; both outcomes are logged so that
    # the peering e2e can tell an open gate from a shut one whichever side won.
    spec = op.specs.tenant_spec(meta, obj.get("spec"))
    if key in op.memory.latest or not key_missing(op, namespace, name, spec):
        objects_log.info("Tenant %s/%s: already handled by kopf", namespace, name)
        return
    op.memory.early[key] = obj
    objects_log.info("Tenant %s/%s: key requested ahead of kopf", namespace, name)
    op.tenants.request(key, urgent=True)


# KV snapshots (snapshots.py holds the policy) and vector collections (vectors.py) -----------------------


def needs_cleanup(op: Operator, spec: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Only Tenants whose deletion must delete something outside the cluster carry a finalizer.

    The rest need none: their Secret goes with them (owner reference), and the runtime configs are
    recomputed from the Tenants that exist, so a deletion missed while the operator was down is undone
    by the next pass. A finalizer on every Tenant would cost each one a write and a watch round trip
    before its first reconcile (measured: a quarter of the requests of a 1,000-Tenant burst).
    """
    parsed = op.specs.tenant_spec(meta, spec)  # kopf asks on every event
    return parsed is not None and (deletes_snapshots(parsed) or deletes_collections(op, parsed))


def deletes_snapshots(spec: TenantSpec) -> bool:
    return spec.kv_snapshots.enabled and spec.kv_snapshots.deletion_policy == "Delete"


def deletes_collections(op: Operator, spec: TenantSpec) -> bool:
    """Collections in the platform's bucket, to be deleted with the Tenant (a pod's own disk goes with
    the pod)."""
    return has_collections_store(op) and spec.vectors.deletion_policy == "Delete"


def has_collections_store(op: Operator) -> bool:
    return shared_store_bucket(op.config.s3) is not None


def has_snapshots(op: Operator, spec: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    parsed = op.specs.tenant_spec(meta, spec)
    return parsed is not None and parsed.kv_snapshots.enabled


# A Terminating Tenant annotated with this ("true") loses its finalizer at its next retry, whatever is
# left behind: the way out when its snapshots cannot be deleted and waiting is not wanted.
ANNOTATION_FORCE_RELEASE = "realm.dev/force-release"


def release_reason(op: Operator, body: Mapping[str, Any], at: datetime) -> str | None:
    """Why a deleted Tenant's finalizer goes without its snapshots deleted (None: keep trying)."""
    meta = body.get("metadata") or {}
    if str((meta.get("annotations") or {}).get(ANNOTATION_FORCE_RELEASE, "")).lower() == "true":
        return f"released by the annotation {ANNOTATION_FORCE_RELEASE}=true"
    since = meta.get("deletionTimestamp")
    if not since:
        return None
    waited = (at - datetime.fromisoformat(str(since).replace("Z", "+00:00"))).total_seconds()
    if waited >= op.config.finalizer_timeout_s:
        return (
            f"gave up after {int(waited)} s (the finalizer timeout is {int(op.config.finalizer_timeout_s)} s)"
        )
    return None


def finalize(
    op: Operator, namespace: str, name: str, spec: Mapping[str, Any], body: Mapping[str, Any]
) -> None:
    """Republish without the tenant, delete its KV snapshots and its vector collections (each per its
    deletionPolicy), then release it: runs before the finalizer goes, so they are deleted even if the
    operator was down when the Tenant was deleted. S3 unreachable: retried (the Tenant stays,
    Terminating) until the finalizer timeout passes or the Tenant is annotated
    realm.dev/force-release=true; then released with a warning event naming what was left behind."""
    reconcile_tenant(op, namespace, name)
    refresh_pipelines(op, namespace, tenant=name)
    parsed, _ = parse_spec(spec, TenantSpec)
    if not isinstance(parsed, TenantSpec):
        return
    released = release_reason(op, body, now())
    if released is not None:
        if deletes_snapshots(parsed):
            where = parsed.kv_snapshots.bucket or (op.config.s3.bucket if op.config.s3 else None) or "S3"
            warn(
                body,
                "SnapshotsNotDeleted",
                f"{released}; the Tenant's KV snapshots in {where} may remain and must be deleted by hand",
            )
        if deletes_collections(op, parsed):
            warn(
                body,
                "CollectionsNotDeleted",
                f"{released}; the Tenant's vector collections under {vectors.PREFIX}/ in "
                f"{shared_store_bucket(op.config.s3)} may remain and must be deleted by hand",
            )
        return
    # The owner key of this Tenant (namespace and uid), never its name: a same-named Tenant of another
    # namespace, or an earlier one of this name, keeps its objects.
    owner = identity.owner_key(op, namespace, body["metadata"]["uid"])
    if deletes_snapshots(parsed):
        _delete_snapshots(op, namespace, parsed, owner, body)
    if deletes_collections(op, parsed):
        _delete_collections(op, namespace, owner, body)


def _delete_snapshots(
    op: Operator, namespace: str, spec: TenantSpec, owner: str, body: Mapping[str, Any]
) -> None:
    try:
        tier = snapshots.tier_for(op.kube, namespace, spec, op.config.s3, op.config.snapshot_locations)
        if tier is None:
            return
        deleted = snapshots.delete_all(tier, owner)
    except snapshots.S3Unavailable as e:
        raise kopf.TemporaryError(f"cannot delete the KV snapshots yet: {e}", delay=10) from e
    post(normal, body, "SnapshotsDeleted", f"deleted {deleted} KV snapshot(s) (deletionPolicy Delete)")


def _delete_collections(op: Operator, namespace: str, owner: str, body: Mapping[str, Any]) -> None:
    try:
        objects = vectors.store_for(op.kube, namespace, op.config.s3)
        if objects is None:
            return
        deleted = vectors.delete_owner(objects, owner)
    except (vectors.S3Unavailable, vectors.ObjectsUnavailable) as e:
        raise kopf.TemporaryError(f"cannot delete the vector collections yet: {e}", delay=10) from e
    post(
        normal,
        body,
        "CollectionsDeleted",
        f"deleted {deleted} vector collection(s) (vectors.deletionPolicy Delete)",
    )


def _report_usage(
    op: Operator,
    namespace: str,
    name: str,
    status: Mapping[str, Any] | None,
    usage: dict[str, Any],
    *,
    stamp: str,
) -> None:
    """Write `usage` into the Tenant's status with the time in `stamp`, only when a figure changed or it
    was never stamped: a timer over an unchanged store writes nothing."""
    current = status or {}
    if all(current.get(f) == v for f, v in usage.items()) and current.get(stamp):
        return
    stamped = now().isoformat().replace("+00:00", "Z")
    op.kube.patch_status("Tenant", namespace, name, {**usage, stamp: stamped})


def sweep_kv_snapshots(
    op: Operator,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    body: Mapping[str, Any],
) -> None:
    """Apply ttlSeconds and maxBytes to the tenant's snapshots and report their usage in its status."""
    parsed, _ = parse_spec(spec, TenantSpec)
    if not isinstance(parsed, TenantSpec) or deleting(body):
        return
    tier = snapshots.tier_for(op.kube, namespace, parsed, op.config.s3, op.config.snapshot_locations)
    if tier is None:
        return
    try:
        result = snapshots.sweep(tier, identity.owner_key(op, namespace, body["metadata"]["uid"]), parsed)
    except snapshots.S3Unavailable as e:
        warn(body, "SnapshotsUnreachable", str(e))
        raise kopf.TemporaryError(f"S3 unreachable: {e}", delay=30) from e
    patch: dict[str, Any] = {"kvSnapshotBytes": result.bytes, "kvSnapshotObjects": result.objects}
    if result.expired or result.evicted:
        message = f"expired {result.expired}, evicted {result.evicted} over maxBytes"
        post(normal, body, "SnapshotsSwept", message)
    _report_usage(op, namespace, name, status, patch, stamp="kvSnapshotsSwept")


def measure_vectors(
    op: Operator,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    body: Mapping[str, Any],
) -> None:
    """Report what the tenant's vector collections hold in its status (where they live in S3)."""
    parsed, _ = parse_spec(spec, TenantSpec)
    if not isinstance(parsed, TenantSpec) or deleting(body):
        return
    owner = identity.owner_key(op, namespace, body["metadata"]["uid"])
    try:
        objects = vectors.store_for(op.kube, namespace, op.config.s3)
        if objects is None:
            return
        usage = vectors.usage_of(objects, owner)
    except (vectors.S3Unavailable, vectors.ObjectsUnavailable) as e:
        warn(body, "CollectionsUnreachable", str(e))
        raise kopf.TemporaryError(f"S3 unreachable: {e}", delay=30) from e
    patch: dict[str, Any] = {
        "vectorCollections": usage.collections,
        "vectorCount": usage.vectors,
        "vectorBytes": usage.vector_bytes,
    }
    _report_usage(op, namespace, name, status, patch, stamp="vectorsMeasured")

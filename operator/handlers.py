"""kopf handlers for Tenant, Model and Pipeline: read the world, ask `reconcile` what to write, write it.

What is written where:
- Tenant: a Secret `<tenant>-api-key` (only when the spec names none), created once with a random key,
  owned by the Tenant so the garbage collector removes it; the Tenant's status subresource.
- Model: per version a ConfigMap (runtime config, tenants with key *hashes* only), a Deployment and a
  Service, plus a Service or an HTTPRoute for the model, all server-side applied by `realm-operator`
  with the Model as controller owner; the Model's status subresource. Never any spec.
- Pipeline: its status subresource; and, when it is valid and its references resolve (see the
  publication rule in `reconcile`), an entry in the runtime ConfigMap of every Model its steps use.
  Publishing is part of the Model pass (the ConfigMap is a function of Model, Tenants and Pipelines);
  a Pipeline pass only triggers the passes of the Models it uses or is listed in.

Every pass is level-based: it recomputes everything from what it reads and writes only the difference,
so the same function serves create, update, resume, the periodic timer and the Deployment watch, and a
pass over an unchanged world writes nothing.

The handlers are synchronous on purpose: kopf runs them in its thread pool, and `kube.serialized`
makes passes over one Model take turns, so concurrent Tenant changes cannot publish a stale config.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from realm.operator import builders, world
from realm.operator.kube import Kube, serialized
from realm.operator.options import build_options, gateway_api_served
from realm.operator.passes import PassQueue
from realm.operator.reconcile import (
    KEY_NOT_FOUND,
    SECRET_NOT_FOUND,
    KeyState,
    ObjectKey,
    PipelineView,
    TenantView,
    api_key_hash,
    api_key_secret,
    api_key_secret_ref,
    is_ready,
    key_of,
    model_resource,
    model_selector,
    model_status,
    models_listing_pipeline,
    models_to_republish,
    parse_spec,
    pipeline_models,
    pipeline_status,
    plan,
    published_pipelines,
    published_tenants,
    status_patch,
    tenant_status,
)
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.pipeline import PipelineSpec
from realm.runtime.spec.status import GROUP, VERSION
from realm.runtime.spec.tenant import TenantSpec

log = logging.getLogger("realm.operator")

# How often timers re-run every pass: the safety net for missed events (and the Deployment watch's
# backstop). Read at import because kopf's decorators take it then; the e2e test shortens it.
RESYNC_SECONDS = float(os.environ.get("REALM_RESYNC_SECONDS") or 60)
FINALIZER = "realm.dev/operator"


_kube: Kube | None = None


@dataclass
class Indexes:
    """kopf's indexes, captured from the first handler call (kopf hands them to handlers only)."""

    tenants: Mapping[str, Any]  # namespace -> Store[TenantRecord]
    secrets: Mapping[tuple[str, str], Any]  # (namespace, name) -> Store[{entry: sha256}]


INDEXES: Indexes | None = None


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube.from_environment()
    return _kube


def _now() -> datetime:
    # metav1.Time has second precision; sub-second timestamps would not survive a round trip.
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Outcome:
    """What one pass wrote (names only: never a key)."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    status_written: bool = False

    @property
    def wrote(self) -> bool:
        return bool(self.applied or self.deleted or self.created or self.status_written)


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


# Observation -----------------------------------------------------------------------------------------


def observe_tenants(k: Kube, namespace: str) -> list[TenantView]:
    """Every Tenant in the namespace with its key's hash: from kopf's indexes inside the operator (kept
    current by the watches), from the API otherwise (tests and tools calling a pass directly)."""
    if INDEXES is not None:
        views: list[TenantView] = []
        for rec in world.tenants_in(INDEXES.tenants, namespace):
            ref = api_key_secret_ref(rec.name, rec.spec)
            known, digest = world.secret_entry_hash(INDEXES.secrets, namespace, ref.name, ref.key)
            if not known:  # created a moment ago, its watch event not here yet
                digest = api_key_hash(k.get("Secret", namespace, ref.name), ref.key)
            views.append(TenantView(rec.name, rec.spec, rec.deleting, digest))
        return views
    out: list[TenantView] = []
    for t in k.list("Tenant", namespace):
        name = t["metadata"]["name"]
        spec, _ = parse_spec(t.get("spec"), TenantSpec)
        ref = api_key_secret_ref(name, spec)
        digest = api_key_hash(k.get("Secret", namespace, ref.name), ref.key)
        out.append(TenantView(name, spec if isinstance(spec, TenantSpec) else None, _deleting(t), digest))
    return out


def observe_pipelines(k: Kube, namespace: str) -> list[PipelineView]:
    pipelines = k.list("Pipeline", namespace)
    return [PipelineView(p["metadata"]["name"], p.get("spec"), _deleting(p)) for p in pipelines]


def model_names(k: Kube, namespace: str) -> set[str]:
    """Models in the namespace that are not being deleted."""
    return {m["metadata"]["name"] for m in k.list("Model", namespace) if not _deleting(m)}


def _owned(k: Kube, namespace: str, model: str, with_routes: bool) -> list[dict[str, Any]]:
    sel = model_selector(model)
    kinds = ["ConfigMap", "Deployment", "Service", *(["HTTPRoute"] if with_routes else [])]
    return [o for kind in kinds for o in k.list(kind, namespace, sel)]


# Model -----------------------------------------------------------------------------------------------


def reconcile_model(k: Kube, namespace: str, name: str) -> Outcome:
    """Bring a Model's objects and status in line with its spec and the namespace's tenants."""
    out = Outcome()
    with serialized(namespace, name):
        body = k.get("Model", namespace, name)
        if body is None or _deleting(body):
            return out  # owner references let the garbage collector remove the rest
        meta = body["metadata"]
        spec, error = parse_spec(body.get("spec"), ModelSpec)
        views = observe_tenants(k, namespace)
        tenants = published_tenants(views)
        pipelines = published_pipelines(observe_pipelines(k, namespace), tenants, model_names(k, namespace))
        opts = build_options(k)
        desired: list[dict[str, Any]] = []
        listed = 0
        if isinstance(spec, ModelSpec):
            resource = model_resource(name, namespace, meta["uid"], spec)
            if isinstance(resource, str):
                error = resource
            else:
                try:
                    desired = builders.build_all(resource, tenants, opts, pipelines)
                except (ValidationError, ValueError) as e:  # e.g. a tenant the runtime config rejects
                    error = f"runtime config rejected: {e}"
                allowed_names = [t.name for t in tenants if name in t.spec.allowed_models]
                listed = len(builders.pipelines_for(resource, allowed_names, pipelines))
        observed = _owned(k, namespace, name, with_routes=gateway_api_served(k))
        live: dict[ObjectKey, Mapping[str, Any]] = {key_of(o): o for o in observed}
        if error is None:
            # An invalid spec changes nothing: the last good objects keep serving.
            p = plan(desired, observed, meta["uid"])
            for manifest in p.apply:
                live[key_of(manifest)] = k.apply(manifest)
                out.applied.append(str(key_of(manifest)))
            for key in p.delete:
                k.delete(key)
                live.pop(key, None)
                out.deleted.append(str(key))
        allowed = sum(1 for t in tenants if name in t.spec.allowed_models)
        status = model_status(
            previous=body.get("status"),
            generation=int(meta.get("generation") or 0),
            now=_now(),
            spec=spec if isinstance(spec, ModelSpec) else None,
            spec_error=error,
            desired=desired,
            live=live,
            tenant_count=allowed,
            pipeline_count=listed,
        )
        patch = status_patch(body.get("status"), status)
        if patch is not None:
            k.patch_status("Model", namespace, name, patch)
            out.status_written = True
        _report(body, out, error)
    return out


# Tenant ----------------------------------------------------------------------------------------------


def _ensure_key(k: Kube, body: Mapping[str, Any], spec: TenantSpec | None, out: Outcome) -> KeyState:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    ref = api_key_secret_ref(name, spec)
    secret = k.get("Secret", namespace, ref.name)
    if secret is None and ref.managed and not _deleting(body):
        # A fresh random key, created once: an existing Secret is never overwritten (that would
        # rotate the key under the tenant's feet). The key itself goes nowhere but the Secret.
        manifest = api_key_secret(name, namespace, meta["uid"], ref, "sk-realm-" + secrets.token_urlsafe(32))
        if k.create(manifest) is not None:
            out.created.append(f"Secret/{ref.name}")
        secret = k.get("Secret", namespace, ref.name)
    if secret is None:
        return KeyState(ref.name, SECRET_NOT_FOUND, f"Secret {ref.name} not found")
    if api_key_hash(secret, ref.key) is None:
        return KeyState(ref.name, KEY_NOT_FOUND, f"Secret {ref.name} has no key {ref.key}")
    return KeyState(ref.name)


def reconcile_tenant(
    k: Kube, namespace: str, name: str, republish: Callable[[str, str], object] | None = None
) -> Outcome:
    """Ensure the tenant's key, republish every Model it is (or was) published to, then its status.

    `republish(namespace, model)` runs or requests a Model's pass; the default runs it here and now, the
    handlers pass the coalescing queue. A Tenant being deleted is left out of every runtime config
    (observe_tenants skips it), so the same pass serves the delete handler.
    """
    out = Outcome()
    body = k.get("Tenant", namespace, name)
    if body is None:
        return out
    meta = body["metadata"]
    spec, error = parse_spec(body.get("spec"), TenantSpec)
    tspec = spec if isinstance(spec, TenantSpec) else None
    key = _ensure_key(k, body, tspec, out)

    models = {m["metadata"]["name"] for m in k.list("Model", namespace) if not _deleting(m)}
    allowed = tspec.allowed_models if tspec is not None else []
    previous = (body.get("status") or {}).get("publishedTo") or []
    for model in models_to_republish(allowed, previous):
        if model not in models:
            continue
        if republish is not None:
            republish(namespace, model)
        else:
            sub = reconcile_model(k, namespace, model)
            out.applied += sub.applied
            out.deleted += sub.deleted
    if _deleting(body):
        return out  # no status for an object on its way out
    status = tenant_status(
        previous=body.get("status"),
        generation=int(meta.get("generation") or 0),
        now=_now(),
        spec_error=error,
        key=key,
        allowed=allowed,
        existing_models=models,
        published_to=[m for m in allowed if m in models],
    )
    patch = status_patch(body.get("status"), status)
    if patch is not None:
        k.patch_status("Tenant", namespace, name, patch)
        out.status_written = True
    _report(body, out, error)
    return out


def refresh_tenants(k: Kube, namespace: str, model: str, exists: bool) -> None:
    """Recompute the statuses of the Tenants a Model's arrival or departure changes (ModelNotFound turns
    True once it exists): those allowed to use it whose status disagrees about it being published."""
    if INDEXES is not None:
        names = [
            r.name
            for r in world.tenants_in(INDEXES.tenants, namespace)
            if r.allows(model) and (model in r.published_to) != exists
        ]
    else:
        names = []
        for t in k.list("Tenant", namespace):
            spec, _ = parse_spec(t.get("spec"), TenantSpec)
            if isinstance(spec, TenantSpec) and model in spec.allowed_models:
                names.append(t["metadata"]["name"])
    for name in names:
        reconcile_tenant(k, namespace, name, republish=PASSES.request)


# Pipeline --------------------------------------------------------------------------------------------


def republish_pipeline(
    k: Kube, namespace: str, name: str, raw_spec: Mapping[str, Any] | None, out: Outcome
) -> None:
    """Run the pass of every Model whose runtime config may list the pipeline: the Models its steps use
    now, and those whose live ConfigMap lists it (a removed step, an invalid spec, a deleted Pipeline)."""
    spec, _ = parse_spec(raw_spec, PipelineSpec)
    used = pipeline_models(spec) if isinstance(spec, PipelineSpec) else []
    listed = models_listing_pipeline(k.list("ConfigMap", namespace, builders.LABEL_MODEL), name)
    for model in sorted((set(used) | set(listed)) & model_names(k, namespace)):
        sub = reconcile_model(k, namespace, model)
        out.applied += sub.applied
        out.deleted += sub.deleted


def reconcile_pipeline(k: Kube, namespace: str, name: str, republish: bool = True) -> Outcome:
    """Republish the pipeline (unless `republish` is off: the Models' own timers do it too), then its status.

    A Pipeline that is gone or being deleted gets no status, but its Models are still republished
    without it.
    """
    out = Outcome()
    body = k.get("Pipeline", namespace, name)
    if republish:
        republish_pipeline(k, namespace, name, (body or {}).get("spec"), out)
    if body is None or _deleting(body):
        return out
    tenants: dict[str, TenantSpec | None] = {}
    for t in k.list("Tenant", namespace):
        if not _deleting(t):
            spec, _ = parse_spec(t.get("spec"), TenantSpec)
            tenants[t["metadata"]["name"]] = spec if isinstance(spec, TenantSpec) else None
    models = {
        m["metadata"]["name"]: is_ready(m.get("status"))
        for m in k.list("Model", namespace)
        if not _deleting(m)
    }
    status = pipeline_status(
        previous=body.get("status"),
        generation=int(body["metadata"].get("generation") or 0),
        now=_now(),
        raw_spec=body.get("spec"),
        tenants=tenants,
        models=models,
    )
    patch = status_patch(body.get("status"), status)
    if patch is not None:
        k.patch_status("Pipeline", namespace, name, patch)
        out.status_written = True
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        if ready is not None and ready.status == "False":
            _post(kopf.warn, body, ready.reason, ready.message)
    return out


def _uses_model(pipeline: Mapping[str, Any], model: str) -> bool:
    steps = (pipeline.get("spec") or {}).get("steps") or []
    return any(isinstance(s, Mapping) and s.get("model") == model for s in steps)


def refresh_pipelines(k: Kube, namespace: str, tenant: str | None = None, model: str | None = None) -> None:
    """Re-run the passes of the namespace's Pipelines (those of `tenant`, or using `model`, when given)."""
    for p in k.list("Pipeline", namespace):
        if tenant is not None and (p.get("spec") or {}).get("tenant") != tenant:
            continue
        if model is not None and not _uses_model(p, model):
            continue
        reconcile_pipeline(k, namespace, p["metadata"]["name"])


# Events ----------------------------------------------------------------------------------------------


def _post(fn: Any, body: Mapping[str, Any], reason: str, message: str) -> None:
    try:
        fn(dict(body), reason=reason, message=message[:1024])
    except LookupError:
        # Outside a running operator (tests call the passes directly) there is no event queue.
        log.debug("event %s: %s", reason, message)


def _report(body: Mapping[str, Any], out: Outcome, error: str | None) -> None:
    """One Kubernetes event per pass that changed something, or per invalid spec; none otherwise."""
    if error is not None and out.status_written:
        _post(kopf.warn, body, "Invalid", error)
    changes: Sequence[str] = [*out.created, *out.applied]
    if changes:
        _post(kopf.info, body, "Applied", "applied " + ", ".join(changes))
    if out.deleted:
        _post(kopf.info, body, "Pruned", "deleted " + ", ".join(out.deleted))


# kopf wiring -----------------------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Defaults for every run (main.py's flags refine peering before kopf starts)."""
    # Watches are re-established every ~60 s: a silently dropped connection costs a minute at most.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    # API errors: retry fast first, give up waiting after ~1 min between tries.
    settings.networking.error_backoffs = [1, 2, 4, 8, 15, 30, 60]
    settings.networking.request_timeout = 60
    # Progress and the last handled spec go to annotations, not status: the status schemas are
    # structural (generated from pydantic), so the apiserver would prune a `status.kopf` field and
    # kopf would lose track of retries and re-run handlers forever. Annotations are always kept.
    prefix = "operator.realm.dev"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration", v1=False
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.reporting_component = "realm-operator"
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 8


def _model_pass(namespace: str, model: str) -> None:
    reconcile_model(kube(), namespace, model)


PASSES = PassQueue(_model_pass)


def _capture(kwargs: Mapping[str, Any]) -> None:
    """Remember kopf's indexes (handed to every handler; populated before the first one runs)."""
    global INDEXES
    if INDEXES is None and "realm_tenants" in kwargs and "realm_secret_hashes" in kwargs:
        INDEXES = Indexes(tenants=kwargs["realm_tenants"], secrets=kwargs["realm_secret_hashes"])


@kopf.index(GROUP, VERSION, "tenants")
def realm_tenants(
    namespace: str | None,
    name: str | None,
    uid: str | None,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    **_: Any,
) -> dict[str, world.TenantRecord]:
    assert namespace and name
    return {namespace: world.tenant_record(name, uid or "", spec, meta, status)}


@kopf.index("", "v1", "secrets")
def realm_secret_hashes(
    namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, str]]:
    assert namespace and name
    return {(namespace, name): world.secret_hashes(body)}


@kopf.on.event("", "v1", "secrets")
def secret_event(namespace: str | None, name: str | None, type: str | None, **kwargs: Any) -> None:
    """A key Secret changed (rotated, deleted, recreated): republish its tenants' Models right away."""
    _capture(kwargs)
    if not (namespace and name) or INDEXES is None or type not in ("ADDED", "MODIFIED", "DELETED"):
        return
    for rec in world.tenants_in(INDEXES.tenants, namespace):
        if rec.spec is not None and api_key_secret_ref(rec.name, rec.spec).name == name:
            for model in rec.spec.allowed_models:
                PASSES.request(namespace, model)


@kopf.on.create(GROUP, VERSION, "tenants", backoff=5)
@kopf.on.update(GROUP, VERSION, "tenants", backoff=5)
@kopf.on.resume(GROUP, VERSION, "tenants", backoff=5)
def tenant_changed(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    assert namespace and name
    _capture(kwargs)
    k = kube()
    reconcile_tenant(k, namespace, name, republish=PASSES.request)
    refresh_pipelines(k, namespace, tenant=name)


@kopf.on.delete(GROUP, VERSION, "tenants", backoff=5)
def tenant_deleted(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    """Republish without the tenant; runs before the finalizer goes, so a down operator cannot miss it.

    Synchronous on purpose: the finalizer is released only after the Models no longer list the tenant."""
    assert namespace and name
    _capture(kwargs)
    k = kube()
    reconcile_tenant(k, namespace, name)
    refresh_pipelines(k, namespace, tenant=name)


# A failed resync (e.g. during an apiserver outage) retries soon, not after kopf's default 60 s.
TIMER_BACKOFF = min(RESYNC_SECONDS, 15.0)


@kopf.timer(
    GROUP,
    VERSION,
    "tenants",
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS / 2,
    backoff=TIMER_BACKOFF,
)
def tenant_resync(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    assert namespace and name
    _capture(kwargs)
    reconcile_tenant(kube(), namespace, name, republish=PASSES.request)


@kopf.on.create(GROUP, VERSION, "models", backoff=5)
@kopf.on.update(GROUP, VERSION, "models", backoff=5)
@kopf.on.resume(GROUP, VERSION, "models", backoff=5)
def model_changed(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    assert namespace and name
    _capture(kwargs)
    k = kube()
    reconcile_model(k, namespace, name)
    refresh_tenants(k, namespace, name, exists=True)
    refresh_pipelines(k, namespace, model=name)


@kopf.on.event(GROUP, VERSION, "models")
def model_event(namespace: str | None, name: str | None, type: str | None, **kwargs: Any) -> None:
    """A deleted Model unpublishes the pipelines that used it from the other Models they use, and its
    tenants say it is gone."""
    _capture(kwargs)
    if type == "DELETED" and namespace and name:
        k = kube()
        refresh_pipelines(k, namespace, model=name)
        refresh_tenants(k, namespace, name, exists=False)


@kopf.timer(
    GROUP, VERSION, "models", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS / 4, backoff=TIMER_BACKOFF
)
def model_resync(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    assert namespace and name
    _capture(kwargs)
    reconcile_model(kube(), namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "realm-operator"})
def deployment_event(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    """Replica counts reach the Model's status as they change (and drift is undone right away)."""
    _capture(kwargs)
    model = body.metadata.labels.get(builders.LABEL_MODEL)
    if model and body.metadata.namespace and type in ("ADDED", "MODIFIED", "DELETED", None):
        PASSES.request(body.metadata.namespace, model)


@kopf.on.create(GROUP, VERSION, "pipelines", backoff=5)
@kopf.on.update(GROUP, VERSION, "pipelines", backoff=5)
@kopf.on.resume(GROUP, VERSION, "pipelines", backoff=5)
def pipeline_changed(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    assert namespace and name
    _capture(kwargs)
    reconcile_pipeline(kube(), namespace, name)


@kopf.on.event(GROUP, VERSION, "pipelines")
def pipeline_event(namespace: str | None, name: str | None, type: str | None, **kwargs: Any) -> None:
    """A deleted Pipeline leaves the runtime configs right away. Pipelines carry no finalizer: a deletion
    missed while the operator was down is still undone by the Models' resume and timer passes."""
    _capture(kwargs)
    if type == "DELETED" and namespace and name:
        reconcile_pipeline(kube(), namespace, name)


@kopf.timer(
    GROUP,
    VERSION,
    "pipelines",
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS / 3,
    backoff=TIMER_BACKOFF,
)
def pipeline_resync(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    """Status only: the Models' own timers keep the published pipelines current."""
    assert namespace and name
    _capture(kwargs)
    reconcile_pipeline(kube(), namespace, name, republish=False)

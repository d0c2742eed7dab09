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

Who runs the passes:
- Tenants have no kopf create/update/resume handlers. `tenant_event` (every watch event, including the
  listing at start) requests the Tenant's pass from `TENANTS`, a keyed two-lane queue
  (workqueue.py): creating a missing API key is urgent and runs before any status is written, so a
  burst of new Tenants gets its keys first. Without kopf's changing handlers kopf writes no annotation
  to a Tenant (only those with a cleanup finalizer get one).
- Model passes requested by Tenant, Secret and Deployment changes coalesce in `PASSES` (passes.py);
  Models' own create/update/resume handlers request theirs there too, at once (`now`); their timers
  run the pass in kopf's thread pool.
- Ahead of kopf, light watches of Tenants and Models (fastpath.py) request a new Tenant's key and a new
  Model's pass from the same queues, gated by kopf's peering: kopf's event loop falls seconds behind
  in a burst, and these two writes are what a user waits for.
- Indexers and the event handlers that only request passes are `async`: they run on kopf's loop
  without a trip through its thread pool.
`kube.serialized` makes passes over one Model take turns, so concurrent changes cannot publish a stale
config.
"""

from __future__ import annotations

import contextvars
import ctypes
import ctypes.util
import logging
import os
import secrets
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from pydantic import ValidationError

from realm.operator import autoscale, builders, snapshots, world
from realm.operator.builders import api_key_secret, api_key_secret_ref
from realm.operator.kube import Kube, serialized
from realm.operator.objects import ObjectKey, key_of
from realm.operator.options import build_options, gateway_api_served
from realm.operator.passes import PassQueue
from realm.operator.peering_gate import Gate
from realm.operator.reconcile import (
    KEY_NOT_FOUND,
    SECRET_NOT_FOUND,
    KeyState,
    PipelineView,
    TenantView,
    api_key_hash,
    autoscaled,
    is_ready,
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
    scheduling_problem,
    selector_of,
    status_patch,
    tenant_status,
)
from realm.operator.workqueue import WorkQueue
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
    models: Mapping[str, Any]  # namespace -> Store[ModelRecord]
    pipelines: Mapping[str, Any]  # namespace -> Store[PipelineView]


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


def observe_tenants(k: Kube, namespace: str, model: str | None = None) -> list[TenantView]:
    """Every Tenant in the namespace with its key's hash: from kopf's indexes inside the operator (kept
    current by the watches), from the API otherwise (tests and tools calling a pass directly). With
    `model`, only the Tenants allowed to use it: a Model's config lists no others, nor their pipelines.
    """
    if INDEXES is not None:
        views: list[TenantView] = []
        for rec in world.tenants_in(INDEXES.tenants, namespace):
            if model is not None and not rec.allows(model):
                continue
            ref = api_key_secret_ref(rec.name, rec.spec)
            # A Secret the index lacks does not exist, or was created a moment ago: its watch event
            # will request this pass again (secret_event), so no read is needed here.
            _, digest = world.secret_entry_hash(INDEXES.secrets, namespace, ref.name, ref.key)
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
    if INDEXES is not None:
        views: list[PipelineView] = world.records_in(INDEXES.pipelines, namespace)
        return views
    pipelines = k.list("Pipeline", namespace)
    return [PipelineView(p["metadata"]["name"], p.get("spec"), _deleting(p)) for p in pipelines]


def observe_models(k: Kube, namespace: str) -> dict[str, bool]:
    """Models in the namespace that are not being deleted, with whether each is Ready."""
    if INDEXES is not None:
        return {m.name: m.ready for m in world.records_in(INDEXES.models, namespace) if not m.deleting}
    return {
        m["metadata"]["name"]: is_ready(m.get("status"))
        for m in k.list("Model", namespace)
        if not _deleting(m)
    }


def model_names(k: Kube, namespace: str) -> set[str]:
    return set(observe_models(k, namespace))


def tenant_specs(k: Kube, namespace: str) -> dict[str, TenantSpec | None]:
    """Tenants not being deleted, with their parsed spec (None when invalid)."""
    if INDEXES is not None:
        return {t.name: t.spec for t in world.tenants_in(INDEXES.tenants, namespace) if not t.deleting}
    out: dict[str, TenantSpec | None] = {}
    for t in k.list("Tenant", namespace):
        if not _deleting(t):
            spec, _ = parse_spec(t.get("spec"), TenantSpec)
            out[t["metadata"]["name"]] = spec if isinstance(spec, TenantSpec) else None
    return out


# A Model pass's requests that do not depend on each other go out at once: in a burst each round trip to
# a busy apiserver takes 0.1-0.3 s, and a new Model's Deployment came after seven of them in a row.
_IO = ThreadPoolExecutor(max_workers=128, thread_name_prefix="kube-io")


def _owned(k: Kube, namespace: str, model: str, with_routes: bool) -> list[dict[str, Any]]:
    sel = model_selector(model)
    kinds = ["ConfigMap", "Deployment", "Service", *(["HTTPRoute"] if with_routes else [])]
    listed = [_IO.submit(k.list, kind, namespace, sel) for kind in kinds]
    return [o for f in listed for o in f.result()]


# Model -----------------------------------------------------------------------------------------------


def _unschedulable(
    k: Kube, namespace: str, desired: Sequence[Mapping[str, Any]], live: Mapping[ObjectKey, Mapping[str, Any]]
) -> dict[str, str]:
    """The scheduler's reason, per Deployment whose pods are not all ready (read only for those)."""
    out: dict[str, str] = {}
    for d in desired:
        dep = live.get(key_of(d)) if d["kind"] == "Deployment" else None
        if dep is None:
            continue
        st = dep.get("status") or {}
        if int(st.get("readyReplicas") or 0) >= int((dep.get("spec") or {}).get("replicas", 1)):
            continue
        problem = scheduling_problem(k.list("Pod", namespace, selector_of(dep)))
        if problem:
            out[d["metadata"]["name"]] = problem
    return out


def reconcile_model(k: Kube, namespace: str, name: str) -> Outcome:
    """Bring a Model's objects and status in line with its spec and the namespace's tenants."""
    out = Outcome()
    with serialized(namespace, name):
        with_routes = gateway_api_served(k)
        owned = _IO.submit(_owned, k, namespace, name, with_routes)  # read alongside the Model
        body = k.get("Model", namespace, name)
        if body is None or _deleting(body):
            owned.cancel()
            return out  # owner references let the garbage collector remove the rest
        meta = body["metadata"]
        spec, error = parse_spec(body.get("spec"), ModelSpec)
        views = observe_tenants(k, namespace, model=name)
        tenants = published_tenants(views)
        pipelines = published_pipelines(observe_pipelines(k, namespace), tenants, model_names(k, namespace))
        opts = build_options(k)
        desired: list[dict[str, Any]] = []
        listed = 0
        if isinstance(spec, ModelSpec):
            resource = model_resource(name, namespace, meta["uid"], spec, body.get("status"))
            if isinstance(resource, str):
                error = resource
            else:
                try:
                    desired = builders.build_all(resource, tenants, opts, pipelines)
                except (ValidationError, ValueError) as e:  # e.g. a tenant the runtime config rejects
                    error = f"runtime config rejected: {e}"
                allowed_names = [t.name for t in tenants if name in t.spec.allowed_models]
                listed = len(builders.pipelines_for(resource, allowed_names, pipelines))
        observed = owned.result()
        live: dict[ObjectKey, Mapping[str, Any]] = {key_of(o): o for o in observed}
        if error is None:
            # An invalid spec changes nothing: the last good objects keep serving. No write depends on
            # another (a pod waits for its ConfigMap to appear), so they all go out at once.
            p = plan(desired, observed, meta["uid"])
            applied = [(key_of(m), _IO.submit(k.apply, m)) for m in p.apply]
            deleted = [(key, _IO.submit(k.delete, key)) for key in p.delete]
            for key, result in applied:
                live[key] = result.result()
                out.applied.append(str(key))
            for key, done in deleted:
                done.result()
                live.pop(key, None)
                out.deleted.append(str(key))
        allowed = sum(1 for t in tenants if name in t.spec.allowed_models)
        unschedulable = _unschedulable(k, namespace, desired, live)
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
            unschedulable=unschedulable,
        )
        patch = status_patch(body.get("status"), status)
        if patch is not None:
            out.status_written = k.patch_status("Model", namespace, name, patch) is not None
        _report(body, out, error)
    return out


# Tenant ----------------------------------------------------------------------------------------------

# Secrets this operator created whose watch event has not reached the index yet (read-your-writes: the
# Tenant's next pass would otherwise create it again and be refused). The Secret's first event, indexed
# by `realm_secret_hashes`, ends the entry (in `secret_event`): from then on the index knows better.
FRESH_SECRETS: dict[tuple[str, str], dict[str, str]] = {}


def _ensure_key(k: Kube, body: Mapping[str, Any], spec: TenantSpec | None, out: Outcome) -> KeyState:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    ref = api_key_secret_ref(name, spec)
    digest: str | None
    if INDEXES is not None:
        known, digest = world.secret_entry_hash(INDEXES.secrets, namespace, ref.name, ref.key)
        fresh = FRESH_SECRETS.get((namespace, ref.name))
        if not known and fresh is not None:
            known, digest = True, fresh.get(ref.key)
    else:
        secret = k.get("Secret", namespace, ref.name)
        known, digest = secret is not None, api_key_hash(secret, ref.key)
    if not known and ref.managed and not _deleting(body):
        # A fresh random key, created once: an existing Secret is never overwritten (that would
        # rotate the key under the tenant's feet). The key itself goes nowhere but the Secret.
        manifest = api_key_secret(name, namespace, meta["uid"], ref, "sk-realm-" + secrets.token_urlsafe(32))
        created = k.create(manifest)
        if created is not None:
            out.created.append(f"Secret/{ref.name}")
            FRESH_SECRETS[(namespace, ref.name)] = world.secret_hashes(created)
        else:  # someone was first (a previous pass whose watch event has not arrived yet)
            created = k.get("Secret", namespace, ref.name)
        known, digest = created is not None, api_key_hash(created, ref.key)
    if not known:
        return KeyState(ref.name, SECRET_NOT_FOUND, f"Secret {ref.name} not found")
    if digest is None:
        return KeyState(ref.name, KEY_NOT_FOUND, f"Secret {ref.name} has no key {ref.key}")
    return KeyState(ref.name)


def reconcile_tenant(
    k: Kube,
    namespace: str,
    name: str,
    republish: Callable[[str, str], object] | None = None,
    body: Mapping[str, Any] | None = None,
    created: Sequence[str] = (),
) -> Outcome:
    """Ensure the tenant's key, republish every Model it is (or was) published to, then its status.

    `republish(namespace, model)` runs or requests a Model's pass; the default runs it here and now, the
    handlers pass the coalescing queue. A Tenant being deleted is left out of every runtime config
    (observe_tenants skips it), so the same pass serves the delete handler. `body` is the object as kopf
    just saw it (saves a read); absent, it is read. `created` names what an earlier step created for this
    Tenant (its key, see `tenant_pass`), so this pass's event reports it.
    """
    out = Outcome(created=list(created))
    if body is None:
        body = k.get("Tenant", namespace, name)
    if body is None:
        return out
    meta = body["metadata"]
    spec, error = parse_spec(body.get("spec"), TenantSpec)
    tspec = spec if isinstance(spec, TenantSpec) else None
    key = _ensure_key(k, body, tspec, out)

    models = model_names(k, namespace)
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
        out.status_written = k.patch_status("Tenant", namespace, name, patch) is not None
    _report(body, out, error)
    return out


def refresh_tenants(k: Kube, namespace: str, model: str, exists: bool) -> None:
    """Recompute the statuses of the Tenants a Model's arrival or departure changes (ModelNotFound turns
    True once it exists): those allowed to use it whose status disagrees about it being published."""
    if INDEXES is not None:
        for r in world.tenants_in(INDEXES.tenants, namespace):
            # A Tenant without a status yet has its own pass queued already.
            if r.reconciled and r.allows(model) and (model in r.published_to) != exists:
                TENANTS.request((namespace, r.name))
        return
    for t in k.list("Tenant", namespace):
        spec, _ = parse_spec(t.get("spec"), TenantSpec)
        if isinstance(spec, TenantSpec) and model in spec.allowed_models:
            reconcile_tenant(k, namespace, t["metadata"]["name"], republish=PASSES.request)


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
    tenants = tenant_specs(k, namespace)
    models = observe_models(k, namespace)
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
        out.status_written = k.patch_status("Pipeline", namespace, name, patch) is not None
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        if ready is not None and ready.status == "False":
            _post(kopf.warn, body, ready.reason, ready.message)
    return out


def _uses_model(spec: Mapping[str, Any], model: str) -> bool:
    steps = spec.get("steps") or []
    return any(isinstance(s, Mapping) and s.get("model") == model for s in steps)


def refresh_pipelines(k: Kube, namespace: str, tenant: str | None = None, model: str | None = None) -> None:
    """Re-run the passes of the namespace's Pipelines (those of `tenant`, or using `model`, when given)."""
    for p in observe_pipelines(k, namespace):
        spec = p.raw_spec or {}
        if tenant is not None and spec.get("tenant") != tenant:
            continue
        if model is not None and not _uses_model(spec, model):
            continue
        reconcile_pipeline(k, namespace, p.name)


# Events ----------------------------------------------------------------------------------------------


def _post(fn: Any, body: Mapping[str, Any], reason: str, message: str) -> None:
    try:
        fn(dict(body), reason=reason, message=message[:1024])
    except LookupError:
        # Outside a running operator (tests call the passes directly) there is no event queue.
        log.debug("event %s: %s", reason, message)


def _normal(body: Mapping[str, Any], *, reason: str, message: str) -> None:
    kopf.event(cast(Any, dict(body)), type="Normal", reason=reason, message=message)


def _report(body: Mapping[str, Any], out: Outcome, error: str | None) -> None:
    """One Kubernetes event per pass that changed something, or per invalid spec; none otherwise."""
    if error is not None and out.status_written:
        _post(kopf.warn, body, "Invalid", error)
    changes: Sequence[str] = [*out.created, *out.applied]
    if changes:
        _post(_normal, body, "Applied", "applied " + ", ".join(changes))
    if out.deleted:
        _post(_normal, body, "Pruned", "deleted " + ", ".join(out.deleted))


# kopf wiring -----------------------------------------------------------------------------------------


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own arena (up to 8 per core) and rarely returns their
    memory: with 16 handler threads that alone doubles the RSS. Two arenas cost nothing measurable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Defaults for every run (main.py's flags refine peering before kopf starts)."""
    _limit_malloc_arenas()
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
    # kopf's own log lines ("Handler succeeded") stay in the log; the events that say what the operator
    # did are posted by _report, whatever this level.
    settings.posting.level = logging.WARNING
    # kopf waits this long for the echo of its own patch before it trusts an older event again. Under a
    # burst (a thousand Tenants at once) the echo can take longer than the 5 s default, and kopf would
    # then run a create handler a second time on a stale copy.
    settings.persistence.consistency_timeout = 30
    settings.execution.max_workers = 16
    # Objects handled at once (kopf runs one asyncio worker per object). Bounding them bounds memory in
    # a burst. A worker lingers `idle_timeout` after its last event (5 s by default) and holds its slot
    # meanwhile: in a burst of a thousand Tenants the 401st then waited ~5 s for a slot, in steps (p99
    # Tenant -> Secret 14 s). Tenant and Secret handlers only request passes, so a worker is done in
    # milliseconds and can go at once.
    settings.batching.worker_limit = 400
    settings.batching.idle_timeout = 0.5
    # kopf holds each object's first event this long for more of the same object to batch with; the
    # handlers here are level-based and cheap, so a short window only saves latency.
    settings.batching.batch_window = 0.02
    # The event loop (every watch event) shares the GIL with the pass threads; a thread that wants the
    # GIL waits up to this long for the holder to yield. 5 ms (the default) let the loop fall behind in
    # a burst (p99 Tenant -> Secret 2.5-4.9 s over three runs; 1.9-3.7 s with 1 ms).
    sys.setswitchinterval(0.001)


def _model_pass(namespace: str, model: str) -> None:
    reconcile_model(kube(), namespace, model)


TenantKey = tuple[str, str]  # (namespace, name)
# The newest body of each Tenant seen on the watch: a pass works from it instead of reading the Tenant.
LATEST: dict[TenantKey, Mapping[str, Any]] = {}
# Secrets an urgent step created, reported by the Tenant's next full pass (one event per Tenant).
CREATED: dict[TenantKey, list[str]] = {}


def tenant_pass(key: TenantKey, urgent: bool) -> None:
    """The Tenant's pass: urgent, only its missing API key (then a full pass is requested, behind every
    other urgent one); otherwise the whole of `reconcile_tenant`. A Tenant gone only refreshes its
    pipelines' statuses (the event that saw it go already unpublished it)."""
    namespace, name = key
    k = kube()
    body = LATEST.get(key)
    if body is None and urgent:
        body = EARLY.get(key)
    if body is None:
        if key not in EARLY:
            refresh_pipelines(k, namespace, tenant=name)
        return  # seen only by the light watch yet: kopf's event requests the full pass
    if urgent:
        meta = body.get("metadata", {})
        out = Outcome()
        _ensure_key(k, body, world.tenant_spec(meta, body.get("spec")), out)
        if out.created:
            CREATED.setdefault(key, []).extend(out.created)
        TENANTS.request(key)
        return
    reconcile_tenant(k, namespace, name, republish=PASSES.request, body=body, created=CREATED.pop(key, ()))
    refresh_pipelines(k, namespace, tenant=name)


# Sixteen threads: a pass mostly waits on the apiserver, and a burst of Tenants wants many in flight.
# While new Tenants keep arriving (an urgent request within the last second) their statuses and
# events wait, 15 s at most: the apiserver takes the keys first (see workqueue.py).
TENANTS: WorkQueue[TenantKey] = WorkQueue(tenant_pass, workers=16, quiet=1.0, max_hold=15.0, name="tenant")
# Model passes wait likewise: a pass before the keys exist publishes a config that lacks them and is
# redone right after. 32 workers: a new Model's pass holds its worker while the apiserver allocates its
# Services' cluster IPs (1-3 s each in a burst), and with 16 the last of 20 new Models waited for a free
# worker (Model -> Deployment p99 3.3-3.5 s against 1.2-1.8 s with 32, same noisy hour).
PASSES = PassQueue(_model_pass, workers=32, defer=TENANTS.urgent_active)

INDEX_NAMES = (
    "realm_tenants",
    "realm_secret_hashes",
    "realm_models",
    "realm_pipelines",
)


def _capture(kwargs: Mapping[str, Any]) -> None:
    """Remember kopf's indexes (handed to every handler; populated before the first one runs), and a
    handler's context for the queues' passes (kopf posts events through context variables)."""
    global INDEXES
    if INDEXES is None and all(n in kwargs for n in INDEX_NAMES):
        INDEXES = Indexes(*(kwargs[n] for n in INDEX_NAMES))
    if TENANTS.context is None:
        TENANTS.context = PASSES.context = contextvars.copy_context()


async def peering_seen(**kwargs: Any) -> None:
    """kopf's events for its own peering object (main.py registers this unless standalone). The object
    always exists, so this is the first handler kopf calls once its initial listings are indexed, even
    in an empty namespace: from then on the light watches may act (they need the indexes)."""
    _capture(kwargs)


def tenant_wants_pass(type: str | None, body: Mapping[str, Any]) -> bool:
    """Whether a Tenant's watch event calls for a pass: when first seen (a create, or the listing at the
    operator's start: level-based, whatever happened while it was down), and when its spec changed since
    the status was written. The echo of the operator's own status write does not."""
    if type in (None, "ADDED"):
        return True
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") != body.get("metadata", {}).get("generation"))


def _key_missing(namespace: str, name: str, spec: TenantSpec | None) -> bool:
    """A managed key the index does not know: creating it is the urgent part of a Tenant's pass."""
    if INDEXES is None:
        return False
    ref = api_key_secret_ref(name, spec)
    if not ref.managed or (namespace, ref.name) in FRESH_SECRETS:
        return False
    return not world.secret_entry_hash(INDEXES.secrets, namespace, ref.name, ref.key)[0]


# Ahead of kopf (fastpath.py) ---------------------------------------------------------------------------

# Whether this replica may act on the light watches' events (kopf's peering, read by peering_gate.py).
# None: no light watches run (tests calling passes directly, namespace patterns).
GATE: Gate | None = None
# Bodies of new Tenants a light watch saw before kopf's watch did: their urgent step (the key) runs from
# these. kopf's first event for the Tenant ends the entry.
EARLY: dict[TenantKey, Mapping[str, Any]] = {}
# What the light watches set going, per object: off by default like kopf's per-object lines (main.py
# sets both from --object-log-level); the peering e2e reads it to prove a paused replica did nothing.
objects_log = logging.getLogger("realm.operator.objects")


def _may_act_early() -> bool:
    # INDEXES: kopf has delivered its indexes (its watches are live), which the urgent step reads.
    return GATE is not None and INDEXES is not None and GATE.open()


def tenant_seen_early(type: str, obj: Mapping[str, Any]) -> None:
    """A light watch's Tenant event: a new Tenant whose managed key is missing gets its urgent step now,
    before kopf's loop reaches the event."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not (namespace and name):
        return
    key = (namespace, name)
    if type == "DELETED":
        EARLY.pop(key, None)
        return
    if type != "ADDED" or meta.get("deletionTimestamp"):
        return
    if not _may_act_early():
        objects_log.info("Tenant %s/%s: left to kopf (this replica may not act now)", namespace, name)
        return
    # Whether this watch or kopf's sees a new object first is a race; both outcomes are logged so that
    # the peering e2e can tell an open gate from a shut one whichever side won.
    if key in LATEST or not _key_missing(namespace, name, world.tenant_spec(meta, obj.get("spec"))):
        objects_log.info("Tenant %s/%s: already handled by kopf", namespace, name)
        return
    EARLY[key] = obj
    objects_log.info("Tenant %s/%s: key requested ahead of kopf", namespace, name)
    TENANTS.request(key, urgent=True)


def model_seen_early(type: str, obj: Mapping[str, Any]) -> None:
    """A light watch's Model event: a new Model's pass runs at once (its Deployment is created), without
    the settling and holding that batch later passes. kopf's create handler requests the same pass a
    moment later: the queue merges the two, or runs one more pass that finds the children in place."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if type != "ADDED" or not (namespace and name) or meta.get("deletionTimestamp"):
        return
    if not _may_act_early():
        objects_log.info("Model %s/%s: left to kopf (this replica may not act now)", namespace, name)
        return
    assert INDEXES is not None
    if any(m.name == name for m in world.records_in(INDEXES.models, namespace)):
        # kopf won the race, or a light watch's relist replayed what exists
        objects_log.info("Model %s/%s: already handled by kopf", namespace, name)
        return
    objects_log.info("Model %s/%s: pass requested ahead of kopf", namespace, name)
    PASSES.request(namespace, name, now=True)


@kopf.index(GROUP, VERSION, "tenants")
async def realm_tenants(
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


@kopf.index(GROUP, VERSION, "models")
async def realm_models(
    namespace: str | None, name: str | None, meta: Mapping[str, Any], status: Mapping[str, Any], **_: Any
) -> dict[str, world.ModelRecord]:
    assert namespace and name
    return {namespace: world.model_record(name, meta, status)}


@kopf.index(GROUP, VERSION, "pipelines")
async def realm_pipelines(
    namespace: str | None, name: str | None, spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any
) -> dict[str, PipelineView]:
    assert namespace and name
    return {namespace: world.pipeline_view(name, spec, meta)}


@kopf.index("", "v1", "secrets")
async def realm_secret_hashes(
    namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, str]]:
    assert namespace and name
    return {(namespace, name): world.secret_hashes(body)}


@kopf.on.event("", "v1", "secrets")
async def secret_event(namespace: str | None, name: str | None, type: str | None, **kwargs: Any) -> None:
    """A key Secret changed (rotated, deleted, recreated): republish its tenants' Models right away."""
    _capture(kwargs)
    FRESH_SECRETS.pop((namespace or "", name or ""), None)  # the index has seen it (kopf indexes first)
    if not (namespace and name) or INDEXES is None or type not in ("ADDED", "MODIFIED", "DELETED"):
        return
    # A scan, but of names computed once per Tenant generation (a second kopf index would cost more: every
    # index runs on every Tenant event, and kopf hands every index to every handler).
    for rec in world.tenants_in(INDEXES.tenants, namespace):
        if rec.secret != name:
            continue
        if rec.spec is not None:
            for model in rec.spec.allowed_models:
                PASSES.request(namespace, model)
        if type == "DELETED" and not rec.deleting:  # a managed key is created again at once
            TENANTS.request((namespace, rec.name), urgent=True)


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_event(
    namespace: str | None, name: str | None, type: str | None, body: kopf.Body, **kwargs: Any
) -> None:
    """Every Tenant change goes through here (no kopf create/update handlers, whose bookkeeping would
    write an annotation to every Tenant): it requests the Tenant's pass, urgently when its managed key
    is missing. A Tenant gone (or on its way out) leaves the runtime configs at once."""
    _capture(kwargs)
    if not (namespace and name):
        return
    key = (namespace, name)
    meta = body.get("metadata", {})
    EARLY.pop(key, None)
    if type == "DELETED":
        LATEST.pop(key, None)
        CREATED.pop(key, None)
    else:
        LATEST[key] = body
    spec = world.tenant_spec(meta, body.get("spec"))
    if type == "DELETED" or meta.get("deletionTimestamp"):
        allowed = spec.allowed_models if spec is not None else []
        published = (body.get("status") or {}).get("publishedTo") or []
        for model in models_to_republish(allowed, published):
            PASSES.request(namespace, model)
        if type == "DELETED":
            TENANTS.request(key)
        return
    if tenant_wants_pass(type, body):
        TENANTS.request(key, urgent=_key_missing(namespace, name, spec))


def needs_cleanup(spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> bool:
    """Only Tenants whose deletion must delete something outside the cluster carry a finalizer.

    The rest need none: their Secret goes with them (owner reference), and the runtime configs are
    recomputed from the Tenants that exist, so a deletion missed while the operator was down is undone
    by the next pass. A finalizer on every Tenant would cost each one a write and a watch round trip
    before its first reconcile (measured: a quarter of the requests of a 1,000-Tenant burst).
    """
    parsed = world.tenant_spec(meta, spec)  # kopf asks on every event
    return parsed is not None and (
        parsed.kv_snapshots.enabled and parsed.kv_snapshots.deletion_policy == "Delete"
    )


@kopf.on.delete(GROUP, VERSION, "tenants", backoff=5, when=needs_cleanup)
def tenant_deleted(
    namespace: str | None, name: str | None, spec: Mapping[str, Any], body: kopf.Body, **kwargs: Any
) -> None:
    """Republish without the tenant, delete its KV snapshots, then release it: runs before the finalizer
    goes, so the snapshots are deleted even if the operator was down when the Tenant was deleted. S3
    unreachable: retried (the Tenant stays, Terminating, until its data is gone)."""
    assert namespace and name
    _capture(kwargs)
    k = kube()
    reconcile_tenant(k, namespace, name)
    refresh_pipelines(k, namespace, tenant=name)
    parsed, _ = parse_spec(spec, TenantSpec)
    if not isinstance(parsed, TenantSpec):
        return
    tier = snapshots.tier_for(k, namespace, parsed)
    if tier is None:
        return
    try:
        deleted = snapshots.delete_all(tier, name)
    except snapshots.S3Unavailable as e:
        raise kopf.TemporaryError(f"cannot delete the KV snapshots yet: {e}", delay=10) from e
    _post(_normal, body, "SnapshotsDeleted", f"deleted {deleted} KV snapshot(s) (deletionPolicy Delete)")


def has_snapshots(spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> bool:
    parsed = world.tenant_spec(meta, spec)
    return parsed is not None and parsed.kv_snapshots.enabled


KV_SWEEP_SECONDS = float(os.environ.get("REALM_KV_SWEEP_SECONDS") or 300)


@kopf.timer(
    GROUP,
    VERSION,
    "tenants",
    interval=KV_SWEEP_SECONDS,
    initial_delay=min(KV_SWEEP_SECONDS, 10.0),
    backoff=min(KV_SWEEP_SECONDS, 30.0),
    when=has_snapshots,
)
def tenant_kv_sweep(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    """Apply ttlSeconds and maxBytes to the tenant's snapshots and report their usage in its status.
    Only Tenants with snapshots enabled carry this timer."""
    assert namespace and name
    _capture(kwargs)
    parsed, _ = parse_spec(spec, TenantSpec)
    k = kube()
    if not isinstance(parsed, TenantSpec) or body.get("metadata", {}).get("deletionTimestamp"):
        return
    tier = snapshots.tier_for(k, namespace, parsed)
    if tier is None:
        return
    try:
        result = snapshots.sweep(tier, name, parsed)
    except snapshots.S3Unavailable as e:
        _post(kopf.warn, body, "SnapshotsUnreachable", str(e))
        raise kopf.TemporaryError(f"S3 unreachable: {e}", delay=30) from e
    patch: dict[str, Any] = {"kvSnapshotBytes": result.bytes, "kvSnapshotObjects": result.objects}
    if result.expired or result.evicted:
        message = f"expired {result.expired}, evicted {result.evicted} over maxBytes"
        _post(_normal, body, "SnapshotsSwept", message)
    if any((status or {}).get(f) != v for f, v in patch.items()):
        patch["kvSnapshotsSwept"] = _now().isoformat().replace("+00:00", "Z")
        k.patch_status("Tenant", namespace, name, patch)


# A failed resync (e.g. during an apiserver outage) retries soon, not after kopf's default 60 s.
TIMER_BACKOFF = min(RESYNC_SECONDS, 15.0)


@kopf.on.create(GROUP, VERSION, "models", backoff=5)
@kopf.on.update(GROUP, VERSION, "models", backoff=5)
@kopf.on.resume(GROUP, VERSION, "models", backoff=5)
def model_changed(namespace: str | None, name: str | None, **kwargs: Any) -> None:
    """The pass itself goes through the queue, at once (`now`): a light watch may have requested the
    same pass a moment ago, and the queue runs one for both."""
    assert namespace and name
    _capture(kwargs)
    k = kube()
    PASSES.request(namespace, name, now=True)
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
    """The safety net for missed events, for the Model and for its Tenants' statuses (Tenants have no
    timers of their own: a thousand per-object timers cost more than they catch)."""
    assert namespace and name
    _capture(kwargs)
    k = kube()
    reconcile_model(k, namespace, name)
    refresh_tenants(k, namespace, name, exists=True)


def has_autoscaling(spec: Mapping[str, Any], **_: Any) -> bool:
    parsed, _error = parse_spec(spec, ModelSpec)
    return isinstance(parsed, ModelSpec) and parsed.autoscaling is not None


AUTOSCALE_SECONDS = float(os.environ.get("REALM_AUTOSCALE_SECONDS") or 15)


def _scrape(pod: Mapping[str, Any]) -> float | None:
    """A runtime pod's load (queued + running requests), or None when its metrics cannot be read."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    try:
        with urllib.request.urlopen(f"http://{ip}:{builders.PORT}/metrics", timeout=1.0) as resp:
            return float(autoscale.load_from_metrics(resp.read().decode("utf-8", "replace")))
    except (OSError, ValueError):
        return None


@kopf.timer(GROUP, VERSION, "models", interval=AUTOSCALE_SECONDS, backoff=TIMER_BACKOFF, when=has_autoscaling)
def model_autoscale(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    **kwargs: Any,
) -> None:
    """Read each serving version's pods' load, decide its replicas, record them in status (never spec);
    the Model's pass then applies them to the Deployment."""
    assert namespace and name
    _capture(kwargs)
    parsed, _ = parse_spec(spec, ModelSpec)
    if not isinstance(parsed, ModelSpec) or parsed.autoscaling is None:
        return
    k = kube()
    now = _now()
    chosen = autoscaled(status)
    last = (status or {}).get("lastScaleTime")
    last_change = datetime.fromisoformat(last.replace("Z", "+00:00")) if isinstance(last, str) else None
    decided: dict[str, int] = {}
    for version in parsed.serving_versions():
        dep = k.get("Deployment", namespace, f"{name}-{version}")
        pods = [p for p in k.list("Pod", namespace, selector_of(dep)) if not _deleting(p)] if dep else []
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            loads = list(pool.map(_scrape, running))
        current = chosen.get(version, parsed.autoscaling.min_replicas)
        decided[version] = autoscale.desired_replicas(
            current=current, loads=loads, policy=parsed.autoscaling, last_change=last_change, now=now
        )
    if decided == {v: chosen.get(v) for v in decided}:
        return
    versions = [dict(v) for v in (status or {}).get("versions") or [] if isinstance(v, Mapping)]
    names = {v.get("name") for v in versions}
    versions += [{"name": v, "replicas": 0, "readyReplicas": 0} for v in decided if v not in names]
    for v in versions:
        if v.get("name") in decided:
            v["desiredReplicas"] = decided[str(v["name"])]
    patch: dict[str, Any] = {"versions": versions}
    if any(chosen.get(v) is not None and chosen[v] != n for v, n in decided.items()):
        patch["lastScaleTime"] = now.isoformat().replace("+00:00", "Z")
    k.patch_status("Model", namespace, name, patch)
    PASSES.request(namespace, name)


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

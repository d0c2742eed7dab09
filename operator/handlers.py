"""kopf's wiring: which kopf event, index or timer calls which kind's function (tenants.py, models.py,
pipelines.py). Nothing here decides or writes; every handler finds the operator's state (state.Operator)
in kopf's `memo`, which main.py hands to kopf.

Every pass is level-based: it recomputes everything from what it reads and writes only the difference,
so the same function serves create, update, resume, the periodic timer and the Deployment watch, and a
pass over an unchanged world writes nothing.

Who runs the passes:
- Tenant passes run on the Tenant queue (`op.tenants`, workqueue.py), requested by every Tenant event
  (tenants.watch_event) and by key Secret events.
- Model passes run on the Model pass queue (`op.passes`, passes.py), the one way to run one: Tenant,
  Secret, Deployment and Pipeline changes, the Models' own create/update/resume handlers (at once,
  `now`) and their timers request them there, so at most one pass per Model runs at a time.
- ModelPool passes run on the pool pass queue (`op.pool_passes`) likewise. A Model's change requests
  the passes of every pool and every other Model of its namespace (their runtime configs list where
  each Model runs, `cluster`); a pool's change or its Deployment's requests its members' passes.
- Ahead of kopf, light watches of Tenants and Models (fastpath.py) request a new Tenant's key and a new
  Model's pass from the same queues, gated by kopf's peering.
- Indexers and the event handlers that only request passes are `async`: they run on kopf's loop
  without a trip through its thread pool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import kopf

from realm.operator import (
    builders,
    kopf_settings,
    models,
    pipelines,
    pool_builders,
    pools,
    tenants,
    traffic,
    world,
)
from realm.operator.kube import Kube
from realm.operator.options import OperatorConfig
from realm.operator.reconcile import PipelineView
from realm.operator.state import Operator, operator_of
from realm.runtime.spec.status import GROUP, VERSION

# How often timers re-run every pass: the safety net for missed events (and the Deployment watch's
# backstop). Read at import because kopf's decorators take it then; the e2e test shortens it.
RESYNC_SECONDS = float(os.environ.get("REALM_RESYNC_SECONDS") or 60)
# A failed resync (e.g. during an apiserver outage) retries soon, not after kopf's default 60 s.
TIMER_BACKOFF = min(RESYNC_SECONDS, 15.0)
KV_SWEEP_SECONDS = float(os.environ.get("REALM_KV_SWEEP_SECONDS") or 300)
VECTORS_MEASURE_SECONDS = float(os.environ.get("REALM_VECTORS_MEASURE_SECONDS") or 120)
AUTOSCALE_SECONDS = float(os.environ.get("REALM_AUTOSCALE_SECONDS") or 15)
# The index handlers below, in world.Indexes' field order (kopf names each index after its handler).
INDEX_NAMES = ("realm_tenants", "realm_secret_hashes", "realm_models", "realm_pipelines", "realm_pools")


def new_operator(kube: Kube, config: OperatorConfig) -> Operator:
    """The operator's state, its queues running the Tenant, Model and ModelPool passes."""
    return Operator(
        kube,
        config,
        tenant_pass=tenants.tenant_pass,
        model_pass=models.reconcile_model,
        pool_pass=pools.reconcile_pool,
    )


def _operator(memo: Mapping[str, Any]) -> Operator:
    """The operator's state, for a resource handler: kopf calls those only once its indexes are
    populated, which the light watches wait for."""
    op = operator_of(memo)
    op.kopf_called()
    return op


# Start -------------------------------------------------------------------------------------------------


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Settings for every run, and kopf's indexes into the operator's state: kopf hands them to every
    handler, this one included (empty now, live from then on), so the queues' passes read them whether
    or not a peering object is watched."""
    kopf_settings.configure(settings)
    settings.watching.label_selectors["", "v1", "secrets"] = builders.LABEL_TENANT
    operator_of(memo).indexes = world.Indexes(*(kwargs[n] for n in INDEX_NAMES))


async def peering_seen(memo: kopf.Memo, **_: Any) -> None:
    """kopf's events for its own peering object (main.py registers this unless standalone). The object
    always exists, so this is the first handler kopf calls once its initial listings are indexed, even
    in an empty namespace: from then on the light watches may act (they need the indexes)."""
    _operator(memo)


# Indexes (world.py) --------------------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, "tenants")
async def realm_tenants(
    namespace: str | None,
    name: str | None,
    uid: str | None,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    memo: kopf.Memo,
    **_: Any,
) -> dict[str, world.TenantRecord]:
    assert namespace and name
    parsed = operator_of(memo).specs.tenant_spec(meta, spec)
    return {namespace: world.tenant_record(name, uid or "", parsed, meta, status)}


@kopf.index(GROUP, VERSION, "models")
async def realm_models(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    **_: Any,
) -> dict[str, world.ModelRecord]:
    assert namespace and name
    return {namespace: world.model_record(name, meta, status, spec)}


@kopf.index(GROUP, VERSION, "modelpools")
async def realm_pools(
    namespace: str | None, name: str | None, spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any
) -> dict[str, world.PoolRecord]:
    assert namespace and name
    return {namespace: world.pool_record(name, meta, spec)}


@kopf.index(GROUP, VERSION, "pipelines")
async def realm_pipelines(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    **_: Any,
) -> dict[str, PipelineView]:
    assert namespace and name
    return {namespace: world.pipeline_view(name, spec, meta, status)}


# Key Secrets only, selected by the apiserver (`startup` sets the watch's label selector): the operator
# never receives the other Secrets of the namespaces it watches. The label names the Tenant that may use
# the Secret; the operator's own carry it, a Tenant's own Secret must (docs/security.md).


@kopf.index("", "v1", "secrets", labels={builders.LABEL_TENANT: kopf.PRESENT})
async def realm_secret_hashes(
    namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], world.SecretRecord]:
    assert namespace and name
    return {(namespace, name): world.secret_record(body)}


# Tenants and their key Secrets ------------------------------------------------------------------------


@kopf.on.event("", "v1", "secrets", labels={builders.LABEL_TENANT: kopf.PRESENT})
async def secret_event(
    namespace: str | None, name: str | None, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    op = _operator(memo)
    if namespace and name:
        tenants.secret_changed(op, namespace, name, type)


@kopf.on.event(GROUP, VERSION, "tenants")
async def tenant_event(
    namespace: str | None, name: str | None, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Every Tenant change (no kopf create/update handlers, whose bookkeeping would write an annotation
    to every Tenant)."""
    op = _operator(memo)
    if namespace and name:
        tenants.watch_event(op, namespace, name, type, body)


def needs_cleanup(spec: Mapping[str, Any], meta: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> bool:
    return tenants.needs_cleanup(operator_of(memo), spec, meta)


@kopf.on.delete(GROUP, VERSION, "tenants", backoff=5, when=needs_cleanup)
def tenant_deleted(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    body: kopf.Body,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace and name
    tenants.finalize(_operator(memo), namespace, name, spec, body)


def has_snapshots(spec: Mapping[str, Any], meta: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> bool:
    return tenants.has_snapshots(operator_of(memo), spec, meta)


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
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Only Tenants with snapshots enabled carry this timer."""
    assert namespace and name
    tenants.sweep_kv_snapshots(_operator(memo), namespace, name, spec, status, body)


def has_collections_store(memo: kopf.Memo, **_: Any) -> bool:
    return tenants.has_collections_store(operator_of(memo))


@kopf.timer(
    GROUP,
    VERSION,
    "tenants",
    interval=VECTORS_MEASURE_SECONDS,
    initial_delay=min(VECTORS_MEASURE_SECONDS, 10.0),
    backoff=min(VECTORS_MEASURE_SECONDS, 30.0),
    when=has_collections_store,
)
def tenant_vectors_measure(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    body: kopf.Body,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Only where collections live in the platform's bucket do Tenants carry this timer."""
    assert namespace and name
    tenants.measure_vectors(_operator(memo), namespace, name, spec, status, body)


# Models -------------------------------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, "models", backoff=5)
@kopf.on.update(GROUP, VERSION, "models", backoff=5)
@kopf.on.resume(GROUP, VERSION, "models", backoff=5)
def model_changed(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """The pass itself goes through the queue, at once (`now`): a light watch may have requested the
    same pass a moment ago, and the queue runs one for both."""
    assert namespace and name
    op = _operator(memo)
    op.passes.request(namespace, name, now=True)
    tenants.refresh_tenants(op, namespace, name, exists=True)
    pipelines.refresh_pipelines(op, namespace, model=name)
    republish_namespace(op, namespace, name)


def republish_namespace(op: Operator, namespace: str, model: str) -> None:
    """A Model came, went or changed: every runtime config of its namespace lists where it runs
    (`cluster`), and a pool's members may have changed. Passes over configs that do not change write
    nothing."""
    for other in world.models_in(op.indexes, namespace):
        if other != model:
            op.passes.request(namespace, other)
    pools.request_all(op, namespace)


@kopf.on.event(GROUP, VERSION, "models")
def model_event(namespace: str | None, name: str | None, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted Model unpublishes the pipelines that used it from the other Models they use, and its
    tenants say it is gone."""
    op = _operator(memo)
    if type in ("ADDED", "MODIFIED") and namespace and name:
        # A status change (Ready flipped) reaches no update handler: the Pipelines whose Runnable it
        # changes get their passes here (the index already holds this event's Model).
        pipelines.refresh_runnable(op, namespace, name)
    if type == "DELETED" and namespace and name:
        op.traffic.forget(namespace, name)
        pipelines.refresh_pipelines(op, namespace, model=name)
        tenants.refresh_tenants(op, namespace, name, exists=False)
        republish_namespace(op, namespace, name)


@kopf.timer(
    GROUP, VERSION, "models", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS / 4, backoff=TIMER_BACKOFF
)
def model_resync(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """The safety net for missed events, for the Model and for its Tenants' statuses (Tenants have no
    timers of their own: a thousand per-object timers cost more than they catch)."""
    assert namespace and name
    op = _operator(memo)
    op.passes.request(namespace, name)
    tenants.refresh_tenants(op, namespace, name, exists=True)
    tenants.refresh_modules(op, namespace)


def has_autoscaling(spec: Mapping[str, Any], **_: Any) -> bool:
    return models.has_autoscaling(spec)


@kopf.timer(GROUP, VERSION, "models", interval=AUTOSCALE_SECONDS, backoff=TIMER_BACKOFF, when=has_autoscaling)
def model_autoscale(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace and name
    models.autoscale_model(_operator(memo), namespace, name, spec, status)


@kopf.timer(GROUP, VERSION, "models", interval=traffic.SAMPLE_SECONDS, backoff=TIMER_BACKOFF)
def model_traffic(
    namespace: str | None, name: str | None, status: Mapping[str, Any], memo: kopf.Memo, **_: Any
) -> None:
    """status.traffic as measured on the Model's pods (traffic.py), beside its passes."""
    assert namespace and name
    traffic.request_tick(_operator(memo), namespace, name, status, time.monotonic())


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "realm-operator"})
def deployment_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Replica counts reach the Model's status as they change (and drift is undone right away)."""
    op = _operator(memo)
    namespace = body.metadata.namespace
    if not namespace or type not in ("ADDED", "MODIFIED", "DELETED", None):
        return
    model = body.metadata.labels.get(builders.LABEL_MODEL)
    if model:
        op.passes.request(namespace, model)
    pool = body.metadata.labels.get(pool_builders.LABEL_POOL)
    if pool:
        op.pool_passes.request(namespace, pool)
        pools.request_members(op, namespace, pool)


# Pipelines ----------------------------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, "pipelines", backoff=5)
@kopf.on.update(GROUP, VERSION, "pipelines", backoff=5)
@kopf.on.resume(GROUP, VERSION, "pipelines", backoff=5)
def pipeline_changed(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    assert namespace and name
    pipelines.reconcile_pipeline(_operator(memo), namespace, name)


@kopf.on.event(GROUP, VERSION, "pipelines")
def pipeline_event(
    namespace: str | None, name: str | None, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A deleted Pipeline leaves the runtime configs right away. Pipelines carry no finalizer: a deletion
    missed while the operator was down is still undone by the Models' resume and timer passes."""
    op = _operator(memo)
    if type == "DELETED" and namespace and name:
        pipelines.reconcile_pipeline(op, namespace, name)


@kopf.timer(
    GROUP,
    VERSION,
    "pipelines",
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS / 3,
    backoff=TIMER_BACKOFF,
)
def pipeline_resync(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Status only: the Models' own timers keep the published pipelines current."""
    assert namespace and name
    pipelines.reconcile_pipeline(_operator(memo), namespace, name, republish=False)


# ModelPools -------------------------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, "modelpools", backoff=5)
@kopf.on.update(GROUP, VERSION, "modelpools", backoff=5)
@kopf.on.resume(GROUP, VERSION, "modelpools", backoff=5)
def pool_changed(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """The pool's pass at once; its members' statuses follow its fit verdict."""
    assert namespace and name
    op = _operator(memo)
    op.pool_passes.request(namespace, name, now=True)
    pools.request_members(op, namespace, name)


@kopf.on.event(GROUP, VERSION, "modelpools")
def pool_event(namespace: str | None, name: str | None, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted pool leaves its members unserved: their statuses say so (PoolNotFound)."""
    op = _operator(memo)
    if type == "DELETED" and namespace and name:
        pools.request_members(op, namespace, name)


@kopf.timer(
    GROUP,
    VERSION,
    "modelpools",
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS / 4,
    backoff=TIMER_BACKOFF,
)
def pool_resync(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
    """The safety net for missed events."""
    assert namespace and name
    _operator(memo).pool_passes.request(namespace, name)


def pool_has_autoscaling(spec: Mapping[str, Any], **_: Any) -> bool:
    return pools.has_autoscaling(spec)


@kopf.timer(
    GROUP, VERSION, "modelpools", interval=AUTOSCALE_SECONDS, backoff=TIMER_BACKOFF, when=pool_has_autoscaling
)
def pool_autoscale(
    namespace: str | None,
    name: str | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace and name
    pools.autoscale_pool(_operator(memo), namespace, name, spec, status)

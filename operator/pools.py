"""The ModelPool kind: its pass (a ConfigMap and a Deployment that run every member Model's serving
versions in one pod template, server-side applied with the pool as controller owner), its status (the
fit check's verdict with its numbers), and its autoscaler.

A pool pass runs only from the pool pass queue (`op.pool_passes`, a passes.PassQueue of its own), one
pass per pool at a time. Its ConfigMap is a function of the pool, its members (the Models that name it,
from the Model index), the namespace's Tenants, Pipelines and Models (the `cluster` placement), so every
change to those requests the pool's pass (handlers.py). The member Models keep their own Services, which
select the pool's pods (pool_builders.py); their passes compute the same fit verdict (`world.pool_fit`) to say
whether they are served.

While the members do not fit, the pass changes nothing of the pool (its pods keep running what they
ran, and a first pass creates nothing): a pod that cannot hold its models would only crash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from realm.operator import autoscale, builders, identity, pool_builders, world
from realm.operator.models import scrape
from realm.operator.objects import ObjectKey, key_of
from realm.operator.options import build_options, platform_refusal
from realm.operator.outcome import Outcome, deleting, now, report
from realm.operator.reconcile import (
    model_resource,
    parse_spec,
    plan,
    pool_status,
    published_pipelines,
    published_tenants,
    scheduling_problem,
    selector_of,
    status_patch,
)
from realm.operator.state import Operator
from realm.runtime.spec.pool import Fit, ModelPoolSpec, fit

log = logging.getLogger("realm.operator.pools")


def _owned(op: Operator, namespace: str, name: str) -> list[dict[str, Any]]:
    sel = pool_builders.pool_selector(name)
    kinds = ("ConfigMap", "Deployment", "Service")
    listed = [op.io.submit(op.kube.list, kind, namespace, sel) for kind in kinds]
    return [o for f in listed for o in f.result()]


def autoscaled(status: Mapping[str, Any] | None) -> int | None:
    value = (status or {}).get("desiredReplicas")
    return value if isinstance(value, int) else None


def reconcile_pool(op: Operator, namespace: str, name: str) -> Outcome:
    """Bring a pool's ConfigMap, Deployment and status in line with its spec and its members. The pool
    pass queue's work: request a pass with `op.pool_passes.request`, never call this beside it."""
    k = op.kube
    out = Outcome()
    owned = op.io.submit(_owned, op, namespace, name)
    body = k.get("ModelPool", namespace, name)
    if body is None or deleting(body):
        owned.cancel()
        return out  # owner references let the garbage collector remove the rest
    meta = body["metadata"]
    spec, error = parse_spec(body.get("spec"), ModelPoolSpec)
    verdict: Fit | None = None
    desired: list[dict[str, Any]] = []
    if isinstance(spec, ModelPoolSpec):
        records = [m for m in world.members_of(op.indexes, namespace, name) if m.spec is not None]
        verdict = fit(spec, [(m.name, m.spec) for m in records if m.spec is not None])
        members = [model_resource(m.name, namespace, m.uid, m.spec) for m in records if m.spec is not None]
        bad = [m for m in members if isinstance(m, str)]
        if bad:
            error = "; ".join(bad)
        else:
            resource = pool_builders.PoolResource(
                name,
                namespace,
                meta["uid"],
                spec,
                tuple(m for m in members if not isinstance(m, str)),
                autoscaled(body.get("status")),
            )
            opts = build_options(op.config, op.gateway_api.served())
            tenants = [
                t
                for t in published_tenants(world.tenant_views(op.indexes, namespace))
                if platform_refusal(t.spec, op.config) is None
            ]
            models = set(world.models_in(op.indexes, namespace))
            pipelines = published_pipelines(world.pipelines_in(op.indexes, namespace), tenants, models)
            try:
                cluster = builders.cluster_config(namespace, world.placed_models(op.indexes, namespace))
                desired = pool_builders.build_all(resource, tenants, opts, pipelines, cluster)
            except (ValueError, TypeError) as e:  # e.g. two entries the runtime config refuses together
                error = f"runtime config rejected: {e}"
            if error is None and desired and verdict.status != "False":
                identity.ensure_secret(op, namespace, pool_builders.identity_secret(resource, opts), out)
    observed = owned.result()
    live: dict[ObjectKey, Mapping[str, Any]] = {key_of(o): o for o in observed}
    if error is None and verdict is not None and verdict.status != "False":
        p = plan(desired, observed, meta["uid"])
        applied = [(key_of(m), op.io.submit(k.apply, m)) for m in p.apply]
        deleted = [(key, op.io.submit(k.delete, key)) for key in p.delete]
        for key, result in applied:
            live[key] = result.result()
            out.applied.append(str(key))
        for key, done in deleted:
            done.result()
            live.pop(key, None)
            out.deleted.append(str(key))
    status = pool_status(
        previous=body.get("status"),
        generation=int(meta.get("generation") or 0),
        now=now(),
        spec_error=error,
        fit=verdict,
        desired=desired,
        live=live,
        unschedulable=_unschedulable(op, namespace, desired, live),
    )
    patch = status_patch(body.get("status"), status)
    if patch is not None:
        out.status_written = k.patch_status("ModelPool", namespace, name, patch) is not None
    report(body, out, error)
    return out


def _unschedulable(
    op: Operator, namespace: str, desired: list[dict[str, Any]], live: Mapping[ObjectKey, Mapping[str, Any]]
) -> str | None:
    """The scheduler's reason the pool's pods wait, read only when some are not ready."""
    for d in desired:
        dep = live.get(key_of(d)) if d["kind"] == "Deployment" else None
        if dep is None:
            continue
        if int((dep.get("status") or {}).get("readyReplicas") or 0) >= int(
            (dep.get("spec") or {}).get("replicas", 1)
        ):
            return None
        return scheduling_problem(op.kube.list("Pod", namespace, selector_of(dep)))
    return None


def request_all(op: Operator, namespace: str) -> None:
    """Request the pass of every pool of the namespace (a Model came, went or changed its placement)."""
    for name in world.pools_in(op.indexes, namespace):
        op.pool_passes.request(namespace, name)


def request_members(op: Operator, namespace: str, pool: str) -> None:
    """Request the passes of the Models that name the pool (their status follows the pool's verdict)."""
    for m in world.members_of(op.indexes, namespace, pool):
        op.passes.request(namespace, m.name)


# Autoscaling --------------------------------------------------------------------------------------------


def has_autoscaling(spec: Mapping[str, Any]) -> bool:
    parsed, _error = parse_spec(spec, ModelPoolSpec)
    return isinstance(parsed, ModelPoolSpec) and parsed.autoscaling is not None


def autoscale_pool(
    op: Operator, namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> None:
    """Read the pool's pods' load (queued + running requests of all its models), decide its replicas,
    record them in status (never spec); the pool's pass then applies them to the Deployment."""
    parsed, _ = parse_spec(spec, ModelPoolSpec)
    if not isinstance(parsed, ModelPoolSpec) or parsed.autoscaling is None:
        return
    k = op.kube
    at = now()
    chosen = autoscaled(status)
    last = (status or {}).get("lastScaleTime")
    last_change = datetime.fromisoformat(last.replace("Z", "+00:00")) if isinstance(last, str) else None
    dep = k.get("Deployment", namespace, f"{name}-pool")
    pods = [p for p in k.list("Pod", namespace, selector_of(dep)) if not deleting(p)] if dep else []
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        loads = list(pool.map(scrape, running))
    current = chosen if chosen is not None else parsed.autoscaling.min_replicas
    decided = autoscale.desired_replicas(
        current=current, loads=loads, policy=parsed.autoscaling, last_change=last_change, now=at
    )
    if decided == chosen:
        return
    patch: dict[str, Any] = {"desiredReplicas": decided}
    if chosen is not None:
        patch["lastScaleTime"] = at.isoformat().replace("+00:00", "Z")
    k.patch_status("ModelPool", namespace, name, patch)
    op.pool_passes.request(namespace, name)

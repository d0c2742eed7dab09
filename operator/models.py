"""The Model kind: its pass (per version a ConfigMap, a Deployment and a Service, plus a Service or an
HTTPRoute for the Model, all server-side applied by `realm-operator` with the Model as controller owner),
its status, its autoscaler, and the light watch's early request for a new Model.

A Model pass runs only from the Model pass queue (`op.passes`, passes.py): every change that concerns a
Model requests its pass there, and the queue runs at most one pass per Model at a time, so concurrent
changes cannot publish a stale config. The runtime ConfigMap is a function of the Model, its namespace's
Tenants, its Pipelines and where the namespace's Models run (`cluster`), so publishing a Pipeline is part
of this pass. A Model in a pool (`spec.pool`) owns only its Services: its pool's pass (pools.py) runs its
pods, and its status follows the pool (PoolNotFound, PoolDoesNotFit, the pool's Deployment).
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from realm.operator import autoscale, builders, identity, world
from realm.operator.objects import ObjectKey, key_of
from realm.operator.options import build_options, platform_refusal
from realm.operator.outcome import Outcome, deleting, now, report
from realm.operator.reconcile import (
    autoscaled,
    model_resource,
    model_selector,
    model_status,
    parse_spec,
    plan,
    pool_problem,
    published_pipelines,
    published_tenants,
    scheduling_problem,
    selector_of,
    status_patch,
)
from realm.operator.state import Operator
from realm.runtime.spec.model import ModelSpec

# What the light watches set going, per object: off by default like kopf's per-object lines (main.py
# sets it from --object-log-level); the peering e2e reads it to prove a paused replica did nothing.
objects_log = logging.getLogger("realm.operator.objects")


def _owned(op: Operator, namespace: str, model: str, with_routes: bool) -> list[dict[str, Any]]:
    # A Model in a pool owns no ConfigMap or Deployment now, but may have before it joined the pool:
    # listed all the same, so that the plan prunes them.
    sel = model_selector(model)
    kinds = ["ConfigMap", "Deployment", "Service", *(["HTTPRoute"] if with_routes else [])]
    listed = [op.io.submit(op.kube.list, kind, namespace, sel) for kind in kinds]
    return [o for f in listed for o in f.result()]


def _unschedulable(
    op: Operator,
    namespace: str,
    desired: Sequence[Mapping[str, Any]],
    live: Mapping[ObjectKey, Mapping[str, Any]],
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
        problem = scheduling_problem(op.kube.list("Pod", namespace, selector_of(dep)))
        if problem:
            out[d["metadata"]["name"]] = problem
    return out


def reconcile_model(op: Operator, namespace: str, name: str) -> Outcome:
    """Bring a Model's objects and status in line with its spec and the namespace's tenants. The Model
    pass queue's work: request a pass with `op.passes.request`, never call this beside it."""
    k = op.kube
    out = Outcome()
    with_routes = op.gateway_api.served()
    owned = op.io.submit(_owned, op, namespace, name, with_routes)  # read alongside the Model
    body = k.get("Model", namespace, name)
    if body is None or deleting(body):
        owned.cancel()
        return out  # owner references let the garbage collector remove the rest
    meta = body["metadata"]
    spec, error = parse_spec(body.get("spec"), ModelSpec)
    tenants = [
        t
        for t in published_tenants(
            world.tenant_views(
                op.indexes, namespace, serving=world.names_served_by(op.indexes, namespace, name)
            )
        )
        # A Tenant whose snapshot location or egress the platform refuses is not served (its status
        # says why).
        if platform_refusal(t.spec, op.config) is None
    ]
    models = set(world.models_in(op.indexes, namespace))
    pipelines = published_pipelines(world.pipelines_in(op.indexes, namespace), tenants, models)
    opts = build_options(op.config, op.gateway_api.served())
    desired: list[dict[str, Any]] = []
    listed = 0
    problem: tuple[str, str] | None = None
    pool_deployment: Future[dict[str, Any] | None] | None = None
    if isinstance(spec, ModelSpec) and spec.pool is not None:
        exists, verdict = world.pool_fit(op.indexes, namespace, spec.pool)
        problem = pool_problem(spec.pool, exists, verdict)
        pool_deployment = op.io.submit(k.get, "Deployment", namespace, f"{spec.pool}-pool")
    if isinstance(spec, ModelSpec):
        resource = model_resource(name, namespace, meta["uid"], spec, body.get("status"))
        if isinstance(resource, str):
            error = resource
        else:
            if spec.pool is None:  # a pool's pods read their pool's identity Secret
                identity.ensure_identity_secret(op, resource, opts, out)
            try:
                cluster = builders.cluster_config(namespace, world.placed_models(op.indexes, namespace))
                desired = builders.build_all(resource, tenants, opts, pipelines, cluster)
            except (ValidationError, ValueError) as e:  # e.g. a tenant the runtime config rejects
                error = f"runtime config rejected: {e}"
            allowed_names = [t.name for t in tenants if builders.serves_tenant(resource, t.spec)]
            listed = len(builders.pipelines_for(resource, allowed_names, pipelines))
    observed = owned.result()
    live: dict[ObjectKey, Mapping[str, Any]] = {key_of(o): o for o in observed}
    if error is None:
        # An invalid spec changes nothing: the last good objects keep serving. No write depends on
        # another (a pod waits for its ConfigMap to appear), so they all go out at once.
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
    names = {name, *(e.name for e in spec.embeddings)} if isinstance(spec, ModelSpec) else {name}
    allowed = sum(1 for t in tenants if names & set(t.spec.allowed_models))
    unschedulable = _unschedulable(op, namespace, desired, live)
    status = model_status(
        previous=body.get("status"),
        generation=int(meta.get("generation") or 0),
        now=now(),
        spec=spec if isinstance(spec, ModelSpec) else None,
        spec_error=error,
        desired=desired,
        live=live,
        tenant_count=allowed,
        pipeline_count=listed,
        unschedulable=unschedulable,
        pool_problem=problem,
        pool_deployment=pool_deployment.result() if pool_deployment is not None else None,
    )
    patch = status_patch(body.get("status"), status)
    if patch is not None:
        out.status_written = k.patch_status("Model", namespace, name, patch) is not None
    report(body, out, error)
    return out


def seen_early(op: Operator, type: str, obj: Mapping[str, Any]) -> None:
    """A light watch's Model event: a new Model's pass runs at once (its Deployment is created), without
    the settling and holding that batch later passes. kopf's create handler requests the same pass a
    moment later: the queue merges the two, or runs one more pass that finds the children in place."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if type != "ADDED" or not (namespace and name) or meta.get("deletionTimestamp"):
        return
    if not op.may_act_early():
        objects_log.info("Model %s/%s: left to kopf (this replica may not act now)", namespace, name)
        return
    records: list[world.ModelRecord] = world.records_in(op.indexes.models, namespace)
    if any(m.name == name for m in records):
        # kopf won the race, or a light watch's relist replayed what exists
        objects_log.info("Model %s/%s: already handled by kopf", namespace, name)
        return
    objects_log.info("Model %s/%s: pass requested ahead of kopf", namespace, name)
    op.passes.request(namespace, name, now=True)


# Autoscaling ----------------------------------------------------------------------------------------------


def scrape(pod: Mapping[str, Any]) -> float | None:
    """A runtime pod's load (queued + running requests), or None when its metrics cannot be read."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    try:
        with urllib.request.urlopen(f"http://{ip}:{builders.METRICS_PORT}/metrics", timeout=1.0) as resp:
            return float(autoscale.load_from_metrics(resp.read().decode("utf-8", "replace")))
    except (OSError, ValueError):
        return None


def has_autoscaling(spec: Mapping[str, Any]) -> bool:
    parsed, _error = parse_spec(spec, ModelSpec)
    return isinstance(parsed, ModelSpec) and parsed.autoscaling is not None


def autoscale_model(
    op: Operator, namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> None:
    """Read each serving version's pods' load, decide its replicas, record them in status (never spec);
    the Model's pass then applies them to the Deployment."""
    parsed, _ = parse_spec(spec, ModelSpec)
    if not isinstance(parsed, ModelSpec) or parsed.autoscaling is None:
        return
    k = op.kube
    at = now()
    chosen = autoscaled(status)
    last = (status or {}).get("lastScaleTime")
    last_change = datetime.fromisoformat(last.replace("Z", "+00:00")) if isinstance(last, str) else None
    decided: dict[str, int] = {}
    for version in parsed.serving_versions():
        dep = k.get("Deployment", namespace, f"{name}-{version}")
        pods = [p for p in k.list("Pod", namespace, selector_of(dep)) if not deleting(p)] if dep else []
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            loads = list(pool.map(scrape, running))
        current = chosen.get(version, parsed.autoscaling.min_replicas)
        decided[version] = autoscale.desired_replicas(
            current=current, loads=loads, policy=parsed.autoscaling, last_change=last_change, now=at
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
        patch["lastScaleTime"] = at.isoformat().replace("+00:00", "Z")
    k.patch_status("Model", namespace, name, patch)
    op.passes.request(namespace, name)

"""The Pipeline kind: its status, and its publication. A valid Pipeline whose references resolve (see the
publication rule in `reconcile`) is listed in the runtime ConfigMap of every Model its steps use; that
ConfigMap is the Model pass's to write, so a Pipeline pass only requests the passes of the Models it uses
or is listed in (and the ModelPools', whose ConfigMaps list their members' pipelines)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from realm.operator import builders, world
from realm.operator.outcome import Outcome, deleting, now, warn
from realm.operator.reconcile import (
    models_listing_pipeline,
    parse_spec,
    pipeline_models,
    pipeline_status,
    pipelines_to_refresh,
    raw_uses_model,
    status_patch,
)
from realm.operator.state import Operator
from realm.runtime.spec.pipeline import PipelineSpec


def republish_pipeline(op: Operator, namespace: str, name: str, raw_spec: Mapping[str, Any] | None) -> None:
    """Request the pass of every Model whose runtime config may list the pipeline: the Models its steps
    use now, and those whose live ConfigMap lists it (a removed step, an invalid spec, a deleted Pipeline)."""
    spec, _ = parse_spec(raw_spec, PipelineSpec)
    used = pipeline_models(spec) if isinstance(spec, PipelineSpec) else []
    listed = models_listing_pipeline(op.kube.list("ConfigMap", namespace, builders.LABEL_MODEL), name)
    for model in sorted((set(used) | set(listed)) & set(world.models_in(op.indexes, namespace))):
        op.request_model(namespace, model)
    # A pool's ConfigMap lists its members' pipelines too, and is not labelled with a Model: every pool
    # of the namespace looks again (a pass that changes nothing writes nothing).
    for pool in world.pools_in(op.indexes, namespace):
        op.pool_passes.request(namespace, pool)


def reconcile_pipeline(op: Operator, namespace: str, name: str, republish: bool = True) -> Outcome:
    """Republish the pipeline (unless `republish` is off: the Models' own timers do it too), then its status.

    A Pipeline that is gone or being deleted gets no status, but its Models are still republished
    without it.
    """
    k = op.kube
    out = Outcome()
    body = k.get("Pipeline", namespace, name)
    if republish:
        republish_pipeline(op, namespace, name, (body or {}).get("spec"))
    if body is None or deleting(body):
        return out
    status = pipeline_status(
        previous=body.get("status"),
        generation=int(body["metadata"].get("generation") or 0),
        now=now(),
        raw_spec=body.get("spec"),
        tenants=world.tenant_specs(op.indexes, namespace),
        models=world.models_in(op.indexes, namespace),
    )
    patch = status_patch(body.get("status"), status)
    if patch is not None:
        out.status_written = k.patch_status("Pipeline", namespace, name, patch) is not None
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        if ready is not None and ready.status == "False":
            warn(body, ready.reason, ready.message)
    return out


def refresh_pipelines(
    op: Operator, namespace: str, tenant: str | None = None, model: str | None = None
) -> None:
    """Re-run the passes of the namespace's Pipelines (those of `tenant`, or using `model`, when given)."""
    for p in world.pipelines_in(op.indexes, namespace):
        spec = p.raw_spec or {}
        if tenant is not None and spec.get("tenant") != tenant:
            continue
        if model is not None and not raw_uses_model(spec, model):
            continue
        reconcile_pipeline(op, namespace, p.name)


def refresh_runnable(op: Operator, namespace: str, model: str) -> None:
    """Status-only passes of the Pipelines using `model` whose Runnable this world changes (a Model turned
    Ready or stopped being Ready); the others are left alone, so a Model's frequent status writes cost
    no Pipeline reads."""
    stale = pipelines_to_refresh(
        world.pipelines_in(op.indexes, namespace),
        world.tenant_specs(op.indexes, namespace),
        world.models_in(op.indexes, namespace),
        model,
    )
    for name in stale:
        reconcile_pipeline(op, namespace, name, republish=False)

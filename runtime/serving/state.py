"""What serving a request needs, whatever door it came in by: models and their engines, the
scheduler, the tenants, the sandbox, the conversation and KV stores, the metrics.

The HTTP API extends it with what only HTTP needs (runtime/api/state.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from realm.runtime.config_store import realm_home, runtime_identity
from realm.runtime.conversations import ConversationStore, open_store
from realm.runtime.engines.base import Engine
from realm.runtime.engines.embeddings import OnnxEmbedder
from realm.runtime.kvstore.snapshots import KVSnapshots
from realm.runtime.metrics import Metrics
from realm.runtime.scheduler import AdmissionScheduler, InvocationAdmission, TenantPolicy
from realm.runtime.scheduler.shares import QuotaShares
from realm.runtime.spec.identity import NamespaceIdentity, tenant_uid
from realm.runtime.spec.runtime_config import (
    ClusterConfig,
    ModelConfig,
    PipelineEntry,
    RuntimeConfig,
    TenantEntry,
)
from realm.runtime.vectors.store import CollectionStore

from .egress import EgressRuntime
from .mcp import McpSessions
from .pipeline_runs import PipelineRuns
from .routing import ModelTarget

if TYPE_CHECKING:
    from realm.runtime.sandbox.runner import Sandbox

    from .quota_exchange import QuotaExchange
    from .remote import RemoteGenerations
    from .sampling import Samplers

log = logging.getLogger(__name__)


@dataclass
class ServingState:
    # Keyed by ModelConfig.key: the name of a model's only version, `name@version` otherwise.
    models: dict[str, ModelConfig]
    metrics: Metrics
    # Filled in as models finish loading (keyed like `models`); the API serves (and /healthz answers)
    # before that.
    engines: dict[str, Engine] = field(default_factory=dict)
    # Embedding models by name (RuntimeConfig.embeddings), once loaded (serving/embeddings.py).
    embedders: dict[str, OnnxEmbedder] = field(default_factory=dict)
    # RuntimeConfig.cluster: every version of the namespace's models and its weight (reloaded with the
    # config); None outside a cluster.
    cluster: ClusterConfig | None = None
    scheduler: AdmissionScheduler | None = None
    tenants: dict[str, TenantEntry] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    # Who of the tenants' invocations runs now; None (embedders, tests): every invocation runs at once.
    invocations: InvocationAdmission | None = None
    # Tenants' conversations (runtime/conversations); None: conversations are refused.
    conversations: ConversationStore | None = None
    # Tenants' vector collections (runtime/vectors, serving/vectors.py); None: refused as not ready.
    vectors: CollectionStore | None = None
    # KV snapshots and the prefix cache (runtime/kvstore/snapshots.py); None: every prompt prefills.
    kv: KVSnapshots | None = None
    # RuntimeConfig.module_upload_over_pin: whether an upload may replace a module spec.wasm pins.
    module_upload_over_pin: bool = False
    # RuntimeConfig.server: text one request may have tokenized, bytes of a module fetched from S3.
    max_text_chars: int = 1024 * 1024
    max_s3_module_bytes: int = 64 * 1024 * 1024
    # The secret tenants' owner keys derive from (runtime/spec/identity.py); a bare state gets one of
    # its own, so nothing it keys is shared with anything else.
    identity: NamespaceIdentity = field(default_factory=NamespaceIdentity.ephemeral)
    # Tenant name -> owner key (namespace and uid under the identity secret): what every store and
    # cache scope is keyed by, never the name.
    owners: dict[str, str] = field(default_factory=dict)
    # Calls to the pods serving the models this one does not load (serving/remote.py); None outside a
    # cluster (RuntimeConfig.cluster absent), where only the loaded models are served.
    remote: RemoteGenerations | None = None
    # In a cluster, this pod's share of each tenant's rate quotas and the exchange of demand it follows
    # (serving/quota_exchange.py); None outside one, where each bucket holds the whole quota.
    quota_shares: QuotaShares | None = None
    quota_exchange: QuotaExchange | None = None
    # Tenant modules' own samplers (ABI 1.2), made on the first sampled generation (serving/sampling.py).
    samplers: Samplers | None = None
    # RuntimeConfig.egress, the resolver and each tenant's compiled allowlist (serving/egress.py); a bare
    # state allows no address range beyond the public ones.
    egress: EgressRuntime = field(default_factory=EgressRuntime)
    # Open MCP sessions per (tenant, server) (serving/mcp.py), reused across invocations.
    mcp: McpSessions = field(default_factory=McpSessions)
    # RuntimeConfig.pipelines by name (serving/pipelines.py runs them); swapped whole on a reload, so a
    # run keeps the entry it started with.
    pipelines: dict[str, PipelineEntry] = field(default_factory=dict)
    # This pod's pipeline runs, running and recently ended (serving/pipeline_runs.py).
    pipeline_runs: PipelineRuns = field(default_factory=PipelineRuns)

    @classmethod
    def from_config(cls, config: RuntimeConfig, metrics: Metrics) -> Self:
        state = cls(
            models={m.key: m for m in config.models},
            metrics=metrics,
            cluster=config.cluster,
            module_upload_over_pin=config.module_upload_over_pin,
            invocations=InvocationAdmission(
                config.invocations.max_in_flight, max_wait_s=config.invocations.max_queue_wait_ms / 1000
            ),
            max_text_chars=config.server.max_text_chars,
            max_s3_module_bytes=config.server.max_s3_module_bytes,
            identity=runtime_identity(config),
            egress=EgressRuntime(config.egress),
        )
        state.conversations = open_store(config.conversations, realm_home())
        from .vectors import open_collections  # serving/vectors.py builds on this module

        state.vectors = open_collections(config.vectors, realm_home())
        state.kv = KVSnapshots(
            config.kv_snapshots,
            realm_home(),
            secret=state.identity.derive("kv"),
            listener=lambda event, reason: metrics.kv_snapshot_events.labels(event, reason).inc(),
        )
        state.apply_tenants(config.tenants)
        state.apply_pipelines(config.pipelines)
        return state

    def apply_pipelines(self, pipelines: list[PipelineEntry]) -> None:
        """Swap the pipeline table; runs already started keep the entry they started with."""
        self.pipelines = {p.name: p for p in pipelines}

    def apply_tenants(self, tenants: list[TenantEntry]) -> None:
        """Swap the tenant table; requests already admitted keep the policy they were admitted under.

        A tenant of another namespace than this runtime's identity is left out (nobody can authenticate
        as it): its keys could not match what the operator sweeps and deletes. A tenant whose owner
        changed (deleted and created again: a new uid) or that is gone loses its deployed module."""
        served = [t for t in tenants if t.namespace == self.identity.namespace]
        for t in tenants:
            if t.namespace != self.identity.namespace:
                log.error(
                    "tenant %s is in namespace %s, this runtime's identity is %s's: not served",
                    t.name,
                    t.namespace,
                    self.identity.namespace,
                )
        owners = {t.name: self.identity.owner_key(tenant_uid(t.uid, t.name)) for t in served}
        if self.sandbox is not None:
            for name, owner in self.owners.items():
                if owners.get(name) != owner:
                    self.sandbox.remove(name)
        self.owners = owners
        tenants = served
        self.tenants = {t.name: t for t in tenants}
        self.mcp.retain({(t.name, s.name): s.url for t in tenants for s in t.spec.egress.mcp_servers})
        policies = {t.name: TenantPolicy.from_spec(t.spec) for t in tenants}
        if self.scheduler is not None:
            self.scheduler.set_policies(policies)
        if self.invocations is not None:
            self.invocations.set_policies(policies)

    def loaded_versions(self) -> dict[ModelTarget, int | None]:
        """The versions this runtime loads, with their local weights (what `resolve_target` reads)."""
        return {ModelTarget(m.name, m.served_version): m.weight for m in self.models.values()}

    def key_of(self, target: ModelTarget) -> str | None:
        """The key of the entry that loads `target` here (see `models`); None: not loaded here."""
        for key, m in self.models.items():
            if m.name == target.name and m.served_version == target.version:
                return key
        return None

    def owner(self, tenant: str) -> str:
        """The owner key of a served tenant: what its conversations, KV snapshots and cache scopes are
        keyed by. KeyError for a tenant this runtime does not serve."""
        return self.owners[tenant]

    def attach_scheduler(self, scheduler: AdmissionScheduler) -> None:
        self.scheduler = scheduler
        if self.quota_shares is not None:
            scheduler.set_quota_shares(self.quota_shares)
        scheduler.set_policies({t.name: TenantPolicy.from_spec(t.spec) for t in self.tenants.values()})

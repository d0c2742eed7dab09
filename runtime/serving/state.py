"""What serving a request needs, whatever door it came in by: models and their engines, the
scheduler, the tenants, the sandbox, the conversation and KV stores, the metrics.

The HTTP API extends it with what only HTTP needs (runtime/api/state.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from realm.runtime.config_store import realm_home
from realm.runtime.conversations import ConversationStore, open_store
from realm.runtime.engines.base import Engine
from realm.runtime.kvstore.snapshots import KVSnapshots
from realm.runtime.metrics import Metrics
from realm.runtime.scheduler import AdmissionScheduler, InvocationAdmission, TenantPolicy
from realm.runtime.spec.runtime_config import ModelConfig, RuntimeConfig, TenantEntry

if TYPE_CHECKING:
    from realm.runtime.sandbox.runner import Sandbox


@dataclass
class ServingState:
    models: dict[str, ModelConfig]
    metrics: Metrics
    # Filled in as models finish loading; the API serves (and /healthz answers) before that.
    engines: dict[str, Engine] = field(default_factory=dict)
    scheduler: AdmissionScheduler | None = None
    tenants: dict[str, TenantEntry] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    # Who of the tenants' invocations runs now; None (embedders, tests): every invocation runs at once.
    invocations: InvocationAdmission | None = None
    # Tenants' conversations (runtime/conversations); None: conversations are refused.
    conversations: ConversationStore | None = None
    # KV snapshots and the prefix cache (runtime/kvstore/snapshots.py); None: every prompt prefills.
    kv: KVSnapshots | None = None
    # RuntimeConfig.module_upload_over_pin: whether an upload may replace a module spec.wasm pins.
    module_upload_over_pin: bool = False
    # RuntimeConfig.server: text one request may have tokenized, bytes of a module fetched from S3.
    max_text_chars: int = 1024 * 1024
    max_s3_module_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_config(cls, config: RuntimeConfig, metrics: Metrics) -> Self:
        state = cls(
            models={m.name: m for m in config.models},
            metrics=metrics,
            module_upload_over_pin=config.module_upload_over_pin,
            invocations=InvocationAdmission(
                config.invocations.max_in_flight, max_wait_s=config.invocations.max_queue_wait_ms / 1000
            ),
            max_text_chars=config.server.max_text_chars,
            max_s3_module_bytes=config.server.max_s3_module_bytes,
        )
        state.conversations = open_store(config.conversations, realm_home())
        state.kv = KVSnapshots(
            config.kv_snapshots,
            realm_home(),
            listener=lambda event, reason: metrics.kv_snapshot_events.labels(event, reason).inc(),
        )
        state.apply_tenants(config.tenants)
        return state

    def apply_tenants(self, tenants: list[TenantEntry]) -> None:
        """Swap the tenant table; requests already admitted keep the policy they were admitted under."""
        self.tenants = {t.name: t for t in tenants}
        policies = {t.name: TenantPolicy.from_spec(t.spec) for t in tenants}
        if self.scheduler is not None:
            self.scheduler.set_policies(policies)
        if self.invocations is not None:
            self.invocations.set_policies(policies)

    def attach_scheduler(self, scheduler: AdmissionScheduler) -> None:
        self.scheduler = scheduler
        scheduler.set_policies({t.name: TenantPolicy.from_spec(t.spec) for t in self.tenants.values()})

"""What the API layer shares with the server: engines, scheduler, tenants, metrics, lifecycle flags."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from realm.runtime.config_store import realm_home
from realm.runtime.conversations import ConversationStore, open_store
from realm.runtime.engines.base import Engine
from realm.runtime.kvstore.snapshots import KVSnapshots
from realm.runtime.metrics import Metrics
from realm.runtime.scheduler import AdmissionScheduler, TenantPolicy
from realm.runtime.spec.runtime_config import ModelConfig, RuntimeConfig, TenantEntry

from .auth import AuthTable

if TYPE_CHECKING:
    from realm.runtime.sandbox.runner import Sandbox

log = logging.getLogger(__name__)


@dataclass
class AppState:
    models: dict[str, ModelConfig]
    metrics: Metrics
    # Filled in as models finish loading; the app serves (and /healthz answers) before that.
    engines: dict[str, Engine] = field(default_factory=dict)
    scheduler: AdmissionScheduler | None = None
    tenants: dict[str, TenantEntry] = field(default_factory=dict)
    auth: AuthTable = field(default_factory=lambda: AuthTable(()))
    ready: bool = False
    draining: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_module_bytes: int = 64 * 1024 * 1024
    sandbox: Sandbox | None = None
    # Tenants' conversations (runtime/conversations); None: the conversation routes answer 503.
    conversations: ConversationStore | None = None
    # KV snapshots and the prefix cache (runtime/kvstore/snapshots.py); None: every prompt prefills.
    kv: KVSnapshots | None = None
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_config(cls, config: RuntimeConfig, metrics: Metrics) -> AppState:
        state = cls(models={m.name: m for m in config.models}, metrics=metrics)
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
        self.auth = AuthTable.build(tenants)
        if self.scheduler is not None:
            self.scheduler.set_policies({t.name: TenantPolicy.from_spec(t.spec) for t in tenants})

    def attach_scheduler(self, scheduler: AdmissionScheduler) -> None:
        self.scheduler = scheduler
        scheduler.set_policies({t.name: TenantPolicy.from_spec(t.spec) for t in self.tenants.values()})

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, limit_s: float) -> bool:
        """True when every in-flight API request finished within `limit_s` seconds."""
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), limit_s)
        except TimeoutError:
            return False
        return True

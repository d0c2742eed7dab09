"""What the HTTP API adds to the serving state: API keys, lifecycle flags, body limits, and the
in-flight count the drain waits on (kept by the middleware, which every request passes).

A route finds it as `request.app.state.realm`, and its request's tenant as `request.state.tenant`
(set by the middleware for every /v1 path)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Self

from realm.runtime.metrics import Metrics
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.runtime_config import RuntimeConfig, TenantEntry

from .auth import AuthTable


@dataclass
class AppState(ServingState):
    auth: AuthTable = field(default_factory=lambda: AuthTable(()))
    ready: bool = False
    draining: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_module_bytes: int = 64 * 1024 * 1024
    # Each body is bounded above; this bounds them together (RuntimeConfig.server.maxBufferedBytes),
    # so many slow uploads at once cannot hold the pod's memory.
    max_buffered_bytes: int = 256 * 1024 * 1024
    buffered_bytes: int = 0
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when in_flight drops to 0

    @classmethod
    def from_config(cls, config: RuntimeConfig, metrics: Metrics) -> Self:
        state = super().from_config(config, metrics)
        state.max_buffered_bytes = config.server.max_buffered_bytes
        return state

    def apply_tenants(self, tenants: list[TenantEntry]) -> None:
        super().apply_tenants(tenants)
        self.auth = AuthTable.build(tenants)

    async def wait_idle(self, limit_s: float) -> bool:
        """True when every in-flight API request finished within `limit_s` seconds."""
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), limit_s)
        except TimeoutError:
            return False
        return True

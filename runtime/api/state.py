"""What the HTTP API adds to the serving state (API keys, lifecycle flags, body limits, the
in-flight count the drain waits on), and how a route finds it and its request's tenant."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request

from realm.runtime.serving.state import ServingState
from realm.runtime.spec.runtime_config import TenantEntry

from .auth import AuthTable


@dataclass
class AppState(ServingState):
    auth: AuthTable = field(default_factory=lambda: AuthTable(()))
    ready: bool = False
    draining: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_module_bytes: int = 64 * 1024 * 1024
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def apply_tenants(self, tenants: list[TenantEntry]) -> None:
        super().apply_tenants(tenants)
        self.auth = AuthTable.build(tenants)

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


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.realm
    return state


def request_tenant(request: Request) -> TenantEntry:
    tenant: TenantEntry = request.state.tenant  # set by the auth middleware for every /v1 path
    return tenant

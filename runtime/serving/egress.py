"""A tenant's module reaching out: `http_fetch`, and the checks MCP sessions go through too.

The serving layer owns what one call needs: the tenant's policy (its allowlist under the platform's
address policy, runtime/egress), the invocation's `EgressBudget` (calls, bytes, deadline; shared with
MCP calls), the mapping of runtime/egress's refusals to domain errors, the metrics and a log line per
call (tenant, target host, outcome: never a body or a header's value).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel, ConfigDict

from realm.runtime.egress import client
from realm.runtime.egress.addresses import AddressPolicy
from realm.runtime.egress.allowlist import Allowlist, parse_pattern
from realm.runtime.egress.checks import EgressPolicy, ResolvedTarget, check_url
from realm.runtime.egress.errors import EgressError, Refused, TimedOut, TooLarge, Unreachable
from realm.runtime.egress.resolver import Resolver, SystemResolver
from realm.runtime.egress.transport import PinnedTransport, default_ssl_context
from realm.runtime.egress.urls import parse_url
from realm.runtime.spec.runtime_config import EgressConfig, TenantEntry
from realm.runtime.spec.tenant import McpServer, Quotas, mcp_secret_env

from .errors import EgressDenied, EgressFailed, EgressLimit, ServingError

if TYPE_CHECKING:
    from .state import ServingState

log = logging.getLogger("realm.egress")

__all__ = [
    "EgressBudget",
    "EgressDenied",
    "EgressFailed",
    "EgressLimit",
    "EgressRuntime",
    "FetchRequest",
    "FetchResponse",
    "http_fetch",
    "mcp_authorization",
    "mcp_target",
    "pinned_client",
]


class FetchRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    method: str
    url: str
    headers: list[tuple[str, str]] = []
    body: bytes = b""


class FetchResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class EgressBudget:
    """One invocation's outbound allowance, spent by http_fetch and MCP calls alike. `deadline` is the
    invocation's (a time.monotonic() instant); each call also ends `call_timeout_s` after it starts."""

    calls_left: int
    bytes_left: int
    deadline: float
    call_timeout_s: float

    @classmethod
    def for_invocation(cls, quotas: Quotas, deadline: float) -> EgressBudget:
        return cls(
            calls_left=quotas.tool_calls_per_invocation,
            bytes_left=quotas.egress_bytes_per_invocation,
            deadline=deadline,
            call_timeout_s=quotas.egress_timeout_ms / 1000,
        )

    def take_call(self) -> None:
        """Count one call, or EgressLimit when none is left (or no time is)."""
        if self.calls_left <= 0:
            raise EgressLimit("the invocation's outbound calls are spent", code="calls")
        if self.deadline <= time.monotonic():
            raise EgressLimit("the invocation's deadline has passed", code="deadline")
        self.calls_left -= 1

    def call_deadline(self) -> float:
        return min(time.monotonic() + self.call_timeout_s, self.deadline)

    def charge(self, nbytes: int) -> None:
        self.bytes_left = max(0, self.bytes_left - nbytes)


@dataclass
class EgressRuntime:
    """The runtime-wide half of egress (RuntimeConfig.egress), the resolver, the TLS context, and each
    tenant's compiled policy (rebuilt when its entry changes)."""

    config: EgressConfig = field(default_factory=EgressConfig)
    resolver: Resolver = field(default_factory=SystemResolver)
    _ssl: ssl.SSLContext | None = None
    _policies: dict[str, tuple[TenantEntry, EgressPolicy]] = field(default_factory=dict)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        # Built on first use: loading the CA bundle costs milliseconds that a runtime without egress
        # never needs to spend.
        if self._ssl is None:
            self._ssl = default_ssl_context()
        return self._ssl

    def addresses(self) -> AddressPolicy:
        return AddressPolicy.from_cidrs(self.config.allowed_cidrs, self.config.cluster_cidrs)

    def policy(self, entry: TenantEntry) -> EgressPolicy:
        cached = self._policies.get(entry.name)
        if cached is not None and cached[0] is entry:
            return cached[1]
        try:
            policy = EgressPolicy(
                Allowlist.parse(entry.spec.egress.allowed_outbound_hosts),
                self.addresses(),
                allow_wildcard=self.config.allow_wildcard,
            )
        except Refused as e:
            raise EgressDenied(e.message, code=e.code) from None
        self._policies[entry.name] = (entry, policy)
        return policy

    def server_policy(self, server: McpServer) -> EgressPolicy:
        """An MCP server's URL is declared, so it is its own allowlist; its addresses are still checked."""
        url = parse_url(server.url)
        return EgressPolicy(
            Allowlist((parse_pattern(f"{url.scheme}://{_pattern_host(url.host)}:{url.port}"),)),
            self.addresses(),
        )


def _pattern_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tenant(state: ServingState, tenant: str) -> TenantEntry:
    entry = state.tenants.get(tenant)
    if entry is None:
        raise EgressDenied(f"tenant {tenant!r} is not served here", code="unknown_tenant")
    return entry


def domain_error(error: EgressError) -> ServingError:
    """runtime/egress's refusal as the serving layer's error (the doors map its reason and code)."""
    if isinstance(error, Refused):
        return EgressDenied(error.message, code=error.code)
    if isinstance(error, TooLarge):
        return EgressLimit(error.message, code=error.code)
    if isinstance(error, TimedOut):
        return EgressFailed(error.message, code=error.code)
    assert isinstance(error, Unreachable)
    return EgressFailed(error.message, code=error.code)


OUTCOMES = {EgressDenied: "denied", EgressFailed: "failed", EgressLimit: "limit"}


@contextmanager
def counted(state: ServingState, tenant: str, kind: str, host: str) -> Iterator[None]:
    """Count and log one outbound call (its outcome and reason code; never a body or header value)."""
    started = time.monotonic()
    try:
        yield
    except (EgressDenied, EgressFailed, EgressLimit) as e:
        outcome = OUTCOMES[type(e)]
        state.metrics.egress_requests.labels(tenant, outcome).inc()
        log.info(
            "egress %s tenant=%s host=%s outcome=%s code=%s ms=%.1f",
            kind, tenant, host, outcome, e.code, (time.monotonic() - started) * 1000,
        )  # fmt: skip
        raise
    state.metrics.egress_requests.labels(tenant, "ok").inc()
    log.info(
        "egress %s tenant=%s host=%s outcome=ok ms=%.1f",
        kind,
        tenant,
        host,
        (time.monotonic() - started) * 1000,
    )


def _host_of(url: str) -> str:
    try:
        return parse_url(url).host
    except Refused:
        return "(invalid url)"


async def http_fetch(
    state: ServingState, tenant: str, request: FetchRequest, *, budget: EgressBudget
) -> FetchResponse:
    """One HTTP call of `tenant`'s module, under its allowlist and the invocation's budget."""
    with counted(state, tenant, "http", _host_of(request.url)):
        policy = state.egress.policy(_tenant(state, tenant))
        budget.take_call()
        try:
            response = await client.fetch(
                policy,
                client.Request(request.method, request.url, tuple(request.headers), request.body),
                resolver=state.egress.resolver,
                ssl_context=state.egress.ssl_context,
                max_bytes=budget.bytes_left,
                deadline=budget.call_deadline(),
                on_check=state.metrics.egress_check.observe,
            )
        except EgressError as e:
            if isinstance(e, TooLarge):
                # What was received before the cut was moved all the same.
                budget.charge(budget.bytes_left)
            raise domain_error(e) from None
        budget.charge(len(request.body) + len(response.body))
        return FetchResponse(status=response.status, headers=list(response.headers), body=response.body)


async def mcp_target(state: ServingState, tenant: str, server: str) -> tuple[McpServer, ResolvedTarget]:
    """The tenant's MCP server `server` and its checked, resolved target (EgressDenied when it has no
    such server or its addresses are forbidden). Connect through `pinned_client`."""
    entry = _tenant(state, tenant)
    spec = next((s for s in entry.spec.egress.mcp_servers if s.name == server), None)
    if spec is None:
        raise EgressDenied(f"tenant {tenant!r} has no MCP server {server!r}", code="unknown_server")
    try:
        with check_timer(state):
            target = await check_url(state.egress.server_policy(spec), spec.url, state.egress.resolver)
    except EgressError as e:
        raise domain_error(e) from None
    return spec, target


@contextmanager
def check_timer(state: ServingState) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        state.metrics.egress_check.observe(time.monotonic() - started)


def mcp_authorization(tenant: str, server: McpServer) -> str | None:
    """The Authorization value the operator put in this pod's environment for the server, if any.
    EgressDenied when the spec names a Secret but its value never arrived (a missing Secret)."""
    if server.headers_secret_ref is None:
        return None
    value = os.environ.get(mcp_secret_env(tenant, server.name))
    if not value:
        raise EgressDenied(
            f"MCP server {server.name!r}: Secret {server.headers_secret_ref.name!r} key "
            f"{server.headers_secret_ref.key!r} has not reached this pod",
            code="missing_credentials",
        )
    return value


def pinned_client(
    state: ServingState,
    target: ResolvedTarget,
    *,
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout | None = None,
) -> httpx.AsyncClient:
    """An httpx client that reaches `target`'s checked addresses only (no redirects, nothing from the
    pod's environment): what the MCP SDK's Streamable HTTP client is given."""
    return httpx.AsyncClient(
        transport=PinnedTransport([target], state.egress.ssl_context),
        headers=headers,
        timeout=timeout if timeout is not None else httpx.Timeout(30.0),
        follow_redirects=False,
        trust_env=False,
    )

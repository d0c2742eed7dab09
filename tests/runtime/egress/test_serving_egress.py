"""`http_fetch` and the MCP checks as the serving layer runs them: a tenant's policy, the invocation's
budget, domain errors with codes, metrics and a log line that never carries a body or header value."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import pytest
from egress_loopback import ScriptedResolver, echo, serving, slow_loris

from realm.runtime.metrics import Metrics
from realm.runtime.serving.egress import (
    EgressBudget,
    EgressDenied,
    EgressFailed,
    EgressLimit,
    EgressRuntime,
    FetchRequest,
    http_fetch,
    mcp_authorization,
    mcp_target,
    pinned_client,
)
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.runtime_config import EgressConfig, TenantEntry
from realm.runtime.spec.tenant import Quotas, TenantSpec, mcp_secret_env


def state_with(egress: Mapping[str, object], resolver: ScriptedResolver | None = None) -> ServingState:
    state = ServingState(models={}, metrics=Metrics())
    state.egress = EgressRuntime(EgressConfig(allowed_cidrs=["127.0.0.0/8"]), resolver or ScriptedResolver())
    state.apply_tenants([TenantEntry(name="acme", spec=TenantSpec.model_validate({"egress": egress}))])
    return state


def budget(calls: int = 32, nbytes: int = 1 << 20, seconds: float = 10.0) -> EgressBudget:
    return EgressBudget(
        calls_left=calls, bytes_left=nbytes, deadline=time.monotonic() + seconds, call_timeout_s=10
    )


def count(state: ServingState, outcome: str) -> float:
    value = state.metrics.registry.get_sample_value(
        "realm_egress_requests_total", {"tenant": "acme", "outcome": outcome}
    )
    return value or 0.0


async def test_an_allowed_call_is_answered_counted_charged_and_logged_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving({"/echo": echo}) as port:
        state = state_with({"allowedOutboundHosts": [f"http://127.0.0.1:{port}"]})
        b = budget()
        request = FetchRequest(
            method="POST",
            url=f"http://127.0.0.1:{port}/echo",
            headers=[("X-Api-Key", "hunter2")],
            body=b"payload",
        )
        with caplog.at_level(logging.INFO, logger="realm.egress"):
            response = await http_fetch(state, "acme", request, budget=b)
    assert response.status == 200 and json.loads(response.body)["headers"]["x-api-key"] == "hunter2"
    assert (b.calls_left, b.bytes_left) == (31, (1 << 20) - len(b"payload") - len(response.body))
    assert count(state, "ok") == 1
    line = caplog.records[-1].getMessage()
    assert "tenant=acme host=127.0.0.1 outcome=ok" in line
    assert "hunter2" not in line and "payload" not in line
    assert state.metrics.registry.get_sample_value("realm_egress_check_seconds_count") == 1


async def test_a_host_off_the_allowlist_is_egress_denied_and_counted() -> None:
    state = state_with({"allowedOutboundHosts": ["https://api.example.com"]})
    with pytest.raises(EgressDenied) as caught:
        await http_fetch(
            state, "acme", FetchRequest(method="GET", url="https://evil.example/"), budget=budget()
        )
    assert (caught.value.reason, caught.value.code) == ("egress_denied", "not_allowed")
    assert count(state, "denied") == 1


async def test_deny_by_default() -> None:
    state = state_with({})
    with pytest.raises(EgressDenied, match="not in the tenant's allowed outbound hosts"):
        await http_fetch(
            state, "acme", FetchRequest(method="GET", url="https://api.example.com/"), budget=budget()
        )


async def test_the_invocations_calls_are_limited() -> None:
    state = state_with({"allowedOutboundHosts": ["https://api.example.com"]})
    with pytest.raises(EgressLimit) as caught:
        await http_fetch(
            state, "acme", FetchRequest(method="GET", url="https://api.example.com/"), budget=budget(calls=0)
        )
    assert (caught.value.reason, caught.value.code) == ("egress_limit", "calls")
    assert count(state, "limit") == 1


async def test_a_response_larger_than_the_bytes_left_is_an_egress_limit() -> None:
    async with serving({"/echo": echo}) as port:
        state = state_with({"allowedOutboundHosts": [f"http://127.0.0.1:{port}"]})
        b = budget(nbytes=10)
        with pytest.raises(EgressLimit) as caught:
            await http_fetch(
                state, "acme", FetchRequest(method="GET", url=f"http://127.0.0.1:{port}/echo"), budget=b
            )
    assert caught.value.code == "response_too_large"
    assert b.bytes_left == 0


async def test_the_invocations_deadline_bounds_a_call_shorter_than_its_timeout() -> None:
    async with serving({"/slow": slow_loris}) as port:
        state = state_with({"allowedOutboundHosts": [f"http://127.0.0.1:{port}"]})
        started = time.monotonic()
        with pytest.raises(EgressFailed) as caught:
            await http_fetch(
                state,
                "acme",
                FetchRequest(method="GET", url=f"http://127.0.0.1:{port}/slow"),
                budget=budget(seconds=1),
            )
    assert caught.value.code == "timeout"
    assert time.monotonic() - started < 9  # the call's own timeout is 10 s: the invocation's 1 s ended it


async def test_a_wildcard_the_platform_does_not_allow_is_refused_at_call_time_too() -> None:
    state = state_with({"allowedOutboundHosts": ["*"]})
    with pytest.raises(EgressDenied) as caught:
        await http_fetch(
            state, "acme", FetchRequest(method="GET", url="https://api.example.com/"), budget=budget()
        )
    assert caught.value.code == "wildcard_not_allowed"


async def test_an_unknown_tenant_is_refused() -> None:
    state = state_with({})
    with pytest.raises(EgressDenied, match="tenant 'nobody' is not served here"):
        await http_fetch(
            state, "nobody", FetchRequest(method="GET", url="https://api.example.com/"), budget=budget()
        )


def test_the_budget_comes_from_the_tenants_quotas() -> None:
    b = EgressBudget.for_invocation(Quotas(), deadline=123.0)
    assert (b.calls_left, b.bytes_left, b.call_timeout_s, b.deadline) == (32, 8 * 1024 * 1024, 10.0, 123.0)


async def test_an_mcp_servers_addresses_are_checked_and_its_client_pinned() -> None:
    async with serving({"/mcp": echo}) as port:
        resolver = ScriptedResolver({"mcp.test": [["127.0.0.1"], ["169.254.169.254"]]})
        egress = {"mcpServers": [{"name": "search", "url": f"http://mcp.test:{port}/mcp", "tools": ["*"]}]}
        state = state_with(egress, resolver)
        server, target = await mcp_target(state, "acme", "search")
        async with pinned_client(state, target) as client:
            assert (await client.post(server.url, content=b"{}")).status_code == 200
        # The name now answers the metadata endpoint: the next session is refused.
        with pytest.raises(EgressDenied, match="cloud metadata endpoint"):
            await mcp_target(state, "acme", "search")


async def test_an_unknown_mcp_server_is_refused() -> None:
    state = state_with({})
    with pytest.raises(EgressDenied) as caught:
        await mcp_target(state, "acme", "search")
    assert (caught.value.code, caught.value.message) == (
        "unknown_server",
        "tenant 'acme' has no MCP server 'search'",
    )


def test_mcp_credentials_come_from_the_env_the_operator_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TenantSpec.model_validate(
        {
            "egress": {
                "mcpServers": [
                    {"name": "crm", "url": "https://crm.example/mcp", "headersSecretRef": {"name": "t"}}
                ]
            }
        }
    )
    server = spec.egress.mcp_servers[0]
    monkeypatch.delenv(mcp_secret_env("acme", "crm"), raising=False)
    with pytest.raises(EgressDenied, match="Secret 't' key 'apiKey' has not reached this pod"):
        mcp_authorization("acme", server)
    monkeypatch.setenv(mcp_secret_env("acme", "crm"), "Bearer abc")
    assert mcp_authorization("acme", server) == "Bearer abc"

"""A Tenant's egress reaches its runtime pods: the allowlist in the config, MCP credentials as env from
the Secret (never in the ConfigMap), the platform's egress values in every config; a `*` host without
egress.allowWildcard is refused like an invalid spec."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from realm.operator import builders as b
from realm.operator.options import OperatorConfig, platform_refusal
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.runtime_config import EgressConfig
from realm.runtime.spec.tenant import TenantSpec, mcp_secret_env

MODEL = b.ModelResource(
    "chat", "team-a", "uid-1", ModelSpec.model_validate({"versions": [{"name": "v1", "source": "pypi:x"}]})
)
SECRET_VALUE_NEVER_SEEN = "Bearer sk-this-never-reaches-the-operator"


def tenant(egress: dict[str, Any]) -> b.PublishedTenant:
    spec = TenantSpec.model_validate({"allowedModels": ["chat"], "egress": egress})
    return b.PublishedTenant("acme", spec, (), namespace="team-a")


WITH_MCP = tenant(
    {
        "allowedOutboundHosts": ["https://api.example.com"],
        "mcpServers": [
            {"name": "search", "url": "https://mcp.example.com/mcp", "tools": ["find"]},
            {
                "name": "crm",
                "url": "https://crm.example.com/mcp",
                "tools": ["*"],
                "headersSecretRef": {"name": "crm-token", "key": "authorization"},
            },
        ],
    }
)


def container_env(opts: b.BuildOptions) -> list[dict[str, Any]]:
    dep = b.deployment(MODEL, "v1", [WITH_MCP], opts)
    env: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def test_an_mcp_servers_credentials_reach_the_pod_as_env_from_its_secret() -> None:
    mcp = [e for e in container_env(b.BuildOptions(image="i")) if e["name"].startswith("REALM_MCP_AUTH_")]
    assert mcp == [
        {
            "name": mcp_secret_env("acme", "crm"),
            "valueFrom": {"secretKeyRef": {"name": "crm-token", "key": "authorization", "optional": True}},
        }
    ]


def test_the_config_map_carries_the_allowlist_and_the_secrets_name_only() -> None:
    opts = b.BuildOptions(image="i", egress=EgressConfig(allowed_cidrs=["10.40.0.0/16"]))
    text = b.config_map(MODEL, "v1", [WITH_MCP], opts)["data"]["config.yaml"]
    assert "https://api.example.com" in text and "crm-token" in text
    assert "REALM_MCP_AUTH_" not in text
    config = b.runtime_config(MODEL, "v1", [WITH_MCP], egress=opts.egress)
    assert config.egress.allowed_cidrs == ["10.40.0.0/16"]
    assert config.tenants[0].spec.egress.mcp_servers[1].headers_secret_ref is not None


def test_the_env_name_is_per_tenant_and_server() -> None:
    names = {mcp_secret_env(t, s) for t in ("a", "b") for s in ("x", "y")}
    assert len(names) == 4 and all(n.startswith("REALM_MCP_AUTH_") for n in names)


def test_a_wildcard_host_is_refused_unless_the_platform_allows_it() -> None:
    wild = TenantSpec.model_validate({"egress": {"allowedOutboundHosts": ["https://api.example.com", "*"]}})
    assert platform_refusal(wild, OperatorConfig()) == (
        "spec.egress.allowedOutboundHosts lists *: a `*` host is refused unless the platform sets the "
        "chart value egress.allowWildcard"
    )
    assert platform_refusal(wild, OperatorConfig(egress=EgressConfig(allow_wildcard=True))) is None


def test_a_subdomain_wildcard_is_not_a_wildcard_host() -> None:
    sub = TenantSpec.model_validate({"egress": {"allowedOutboundHosts": ["https://*.example.com:*"]}})
    assert platform_refusal(sub, OperatorConfig()) is None


@pytest.mark.parametrize(
    ("egress", "message"),
    [
        ({"allowedOutboundHosts": ["ftp://files.example.com"]}, "scheme must be http, https or *"),
        ({"allowedOutboundHosts": ["https://api.*.example.com"]}, "allowedOutboundHosts"),
        ({"allowedOutboundHosts": ["https://example.com/path"]}, "allowedOutboundHosts"),
        ({"allowedOutboundHosts": ["https://example.com:99999"]}, "port must be from 1 to 65535"),
        ({"mcpServers": [{"name": "a", "url": "https://x.example"}, {"name": "a", "url": "https://y.example"}]},
         "MCP server names must be unique"),
        ({"mcpServers": [{"name": "a", "url": "ftp://x.example/"}]}, "mcpServers.0.url"),
        ({"mcpServers": [{"name": "a", "url": "https://user@x.example/"}]}, "mcpServers.0.url"),
    ],
)  # fmt: skip
def test_invalid_egress_is_refused_with_a_message(egress: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("*", r"\*")):
        TenantSpec.model_validate({"egress": egress})


def test_the_old_tools_field_is_gone() -> None:
    with pytest.raises(ValidationError, match="tools"):
        TenantSpec.model_validate({"tools": ["search"]})

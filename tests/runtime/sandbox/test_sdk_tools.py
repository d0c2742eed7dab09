"""The Python SDK's ABI 1.3 (sdk/python/realm_tenant): http_fetch, list_tools, call_tool, and the
agent example's loop on plain CPython through realm_tenant.testing.FakeHost (the SDK's own local
backend, what tenant authors test with; a fake at the ABI seam, with canned models and tools).
The built agents against the real runtime, MCP server and HTTP API are
tests/runtime/api/test_invoke_agents.py's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SDK = ROOT / "sdk" / "python"

if str(SDK) not in sys.path:
    sys.path.insert(0, str(SDK))

import realm_tenant as rt  # noqa: E402
from realm_tenant.testing import FakeHost, FakeTool  # noqa: E402

API = "http://127.0.0.1:9/search"


def load_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "realm_agent_example", SDK / "examples" / "agent" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sdk(host: FakeHost, fn: Any) -> Any:
    """Run fn() as a tenant's handler and return what it returned."""
    holder: dict[str, Any] = {}

    def handle(_: Any) -> Any:
        holder["out"] = fn()
        return None

    result = host.run(rt.tenant(handle))
    assert result.ok, result.error
    return holder["out"]


def test_http_fetch_sends_the_request_and_reads_the_response() -> None:
    seen: list[rt.HttpRequest] = []

    def http(req: rt.HttpRequest) -> rt.HttpResponse:
        seen.append(req)
        return rt.HttpResponse(201, (("Content-Type", "text/plain"),), b"made")

    resp = run_sdk(
        FakeHost(http=http),
        lambda: rt.http_fetch(API, method="post", headers={"X-A": "1"}, body="hi"),
    )
    assert seen == [rt.HttpRequest(API, "POST", (("X-A", "1"),), b"hi")]
    assert (resp.status, resp.header("content-type"), resp.text()) == (201, "text/plain", "made")


def test_call_tool_refuses_arguments_that_are_not_an_object() -> None:
    def call() -> str:
        try:
            rt.call_tool("demo", "add", "[1, 2]")
        except rt.RealmError as e:
            return e.code
        return "no error"

    assert run_sdk(FakeHost(mcp={"demo": {"add": lambda a: "3"}}), call) == "invalid-argument"


def test_list_and_call_tools() -> None:
    host = FakeHost(
        mcp={
            "demo": {"add": FakeTool(lambda a: str(a["a"] + a["b"]), "Add two integers.", {"type": "object"})}
        }
    )
    tools, result = run_sdk(
        host, lambda: (rt.list_tools("demo"), rt.call_tool("demo", "add", {"a": 1, "b": 2}))
    )
    assert tools == [rt.ToolInfo("add", "Add two integers.", {"type": "object"})]
    assert (result.text, result.is_error, result.content) == ("3", False, [{"type": "text", "text": "3"}])
    assert host.tool_calls == [("demo", "add")]


def test_a_narrowed_invocation_is_denied_outside_its_tools() -> None:
    def call() -> str:
        try:
            rt.http_fetch(API)
        except rt.RealmError as e:
            return e.code
        return "no error"

    host = FakeHost(http=lambda r: "x", mcp={"demo": {}}, tools={"demo"})
    assert run_sdk(host, call) == "denied"
    assert host.tool_calls == []


def scripted_model(script: list[str]) -> Any:
    """Canned completions in order (what a greedy model would answer under each constraint)."""
    answers = iter(script)
    return lambda params: next(answers)


def agent_host(script: list[str], **kwargs: Any) -> FakeHost:
    return FakeHost(
        input={"question": "What is 2 plus 3, and the weather in Paris?", "server": "demo", "api": API},
        generate=scripted_model(script),
        http=lambda req: "Paris: sunny",
        mcp={"demo": {"add": lambda a: str(a["a"] + a["b"])}},
        **kwargs,
    )


SCRIPT = [
    '{"action":"add"}',
    '{"a":2,"b":3}',
    '{"action":"http_get"}',
    '{"query":"Paris weather"}',
    '{"action":"answer"}',
    '{"answer":"5, and sunny"}',
]


def test_agent_calls_both_tools_then_answers() -> None:
    host = agent_host(SCRIPT)
    result = host.run(load_agent().WitWorld)
    assert result.ok, result.error
    out = result.json()
    assert host.tool_calls == [("demo", "add"), ("http", f"{API}?q=Paris%20weather")]
    assert [s.get("result") for s in out["trace"]] == ["5", "HTTP 200: Paris: sunny"]
    assert out["answer"] == "5, and sunny"


def test_agent_offers_answer_only_once_both_sources_were_tried() -> None:
    host = agent_host(SCRIPT)
    host.run(load_agent().WitWorld)
    constraints = [o.constraint for o in host.options[::2][:3]]
    actions = [json.loads(c.value)["properties"]["action"]["enum"] for c in constraints if c is not None]
    assert actions == [["add", "http_get"], ["http_get"], ["answer"]]


def test_agent_narrowed_to_the_mcp_server_sees_denied_for_the_api() -> None:
    host = agent_host(SCRIPT, tools={"demo"})
    result = host.run(load_agent().WitWorld)
    assert result.ok, result.error
    http_step = result.json()["trace"][1]
    assert (http_step["action"], http_step["error"]) == ("http_get", "denied")
    assert host.tool_calls == [("demo", "add")]


def test_agent_is_bounded_in_turns() -> None:
    host = agent_host(['{"action":"add"}', '{"a":2,"b":3}', '{"answer":"5"}'])
    host.input = {**host.input, "max_turns": 1}
    result = host.run(load_agent().WitWorld)
    assert result.ok, result.error
    assert (result.json()["turns"], result.json()["answer"]) == (2, "5")


def test_agent_holds_the_answer_back_until_min_calls() -> None:
    host = agent_host([*SCRIPT[:4], '{"action":"answer"}', '{"answer":"5"}'])
    host.mcp["demo"]["weather"] = lambda a: "sunny"
    host.input = {**host.input, "min_calls": 3}
    host.run(load_agent().WitWorld)
    constraints = [o.constraint for o in host.options[::2][:3]]
    actions = [json.loads(c.value)["properties"]["action"]["enum"] for c in constraints if c is not None]
    assert actions[2] == ["weather"]  # both sources tried, but only 2 calls: no answer yet

"""The SDKs' ABI 1.3 tools functions (Go: HTTPFetch, ListTools, CallTool; Python: http_fetch,
list_tools, call_tool) and their agent examples, run through the real sandbox: the real `realm`
import module (core_binding.py) for Go, the real component binding for the componentize-py
build, and the real InvocationContext serve them. The stand-in is `ToolServices`, a fake at the
HostServices seam (the runtime's engine, egress and MCP services) with scripted generations and
canned tools. The agents against the real runtime, MCP server and HTTP API:
tests/runtime/api/test_invoke_agents.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import pytest
from go_builds import GoUnavailable, build_go_example
from sandbox_builds import artifact_cache, build_example

from realm.runtime.sandbox import InvocationResult, Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import ErrorCode as Code
from realm.runtime.sandbox.abi import (
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    HostError,
    HttpRequestPayload,
    HttpResponsePayload,
    ToolCallPayload,
    ToolInfoPayload,
    ToolResultPayload,
)
from realm.runtime.sandbox.context import InvocationContext

try:
    build_go_example("echo")
except GoUnavailable as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"Go toolchain unavailable: {e}", allow_module_level=True)

TENANT = "acme"
API = "http://127.0.0.1:9/search"


class ToolServices:
    """A fake at the HostServices seam: generate_with answers the next scripted text; the API and
    the MCP server `demo` (tool `add`) are canned; `narrowed` refuses the API as the runtime's
    X-Realm-Tools narrowing does (DENIED). Records the requests and calls it gets."""

    def __init__(self, script: list[str], *, narrowed: bool = False) -> None:
        self.script = list(script)
        self.narrowed = narrowed
        self.requests: list[HttpRequestPayload] = []
        self.calls: list[ToolCallPayload] = []

    async def generate_with(
        self,
        tenant: str,
        params: GenerateParams,
        options: GenerateOptions,
        on_text: Callable[[str], None] | None,
    ) -> GenerationDetail:
        text = self.script.pop(0)
        return GenerationDetail(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=len(text))

    async def http_fetch(self, tenant: str, request: HttpRequestPayload) -> HttpResponsePayload:
        if self.narrowed:
            raise HostError(Code.DENIED, "127.0.0.1 is not among this invocation's tools")
        self.requests.append(request)
        return HttpResponsePayload(status=200, headers=[("Content-Type", "text/plain")], body=b"sunny")

    async def mcp_list_tools(self, tenant: str, server: str) -> list[ToolInfoPayload]:
        if server != "demo":
            raise HostError(Code.NOT_FOUND, f"no MCP server {server!r}")
        schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
        return [ToolInfoPayload(name="add", description="Add two integers.", input_schema=schema)]

    async def mcp_call_tool(self, tenant: str, call: ToolCallPayload) -> ToolResultPayload:
        self.calls.append(call)
        text = str(call.arguments["a"] + call.arguments["b"])
        return ToolResultPayload(content=[{"type": "text", "text": text}], text=text, is_error=False)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(artifact_cache(), max_workers=2)
    yield sb
    sb.close()


async def run_agent(sandbox: Sandbox, services: ToolServices, language: str = "go") -> InvocationResult:
    body = {"question": "2 plus 3, and the weather?", "server": "demo", "api": API}
    ctx = InvocationContext(
        tenant=TENANT,
        input_data=json.dumps(body),
        services=services,  # type: ignore[arg-type]  # only what the agent calls
        loop=asyncio.get_running_loop(),
        on_output=lambda chunk: None,
    )
    wasm = build_go_example("agent") if language == "go" else build_example("agent")
    module = sandbox.load(TENANT, wasm.read_bytes())
    return await sandbox.invoke(module, ctx, SandboxLimits())


SCRIPT = [
    '{"action":"add"}',
    '{"a":2,"b":3}',
    '{"action":"http_get"}',
    '{"query":"Paris weather"}',
    '{"action":"answer"}',
    '{"answer":"5, and sunny"}',
]


async def test_the_go_agent_calls_the_tool_and_the_api_through_the_core_abi(sandbox: Sandbox) -> None:
    services = ToolServices(SCRIPT)
    out = json.loads((await run_agent(sandbox, services)).output)
    assert [(c.server, c.tool, c.arguments) for c in services.calls] == [("demo", "add", {"a": 2, "b": 3})]
    assert [(r.method, r.url, r.body) for r in services.requests] == [("GET", f"{API}?q=Paris+weather", b"")]
    assert [s.get("result") for s in out["trace"]] == ["5", "HTTP 200: sunny"]
    assert out["answer"] == "5, and sunny"


async def test_a_denied_fetch_reaches_the_go_agent_as_err_denied(sandbox: Sandbox) -> None:
    services = ToolServices(SCRIPT, narrowed=True)
    out = json.loads((await run_agent(sandbox, services)).output)
    step = out["trace"][1]
    assert (step["action"], step["error"], step["message"]) == (
        "http_get",
        "denied",
        "127.0.0.1 is not among this invocation's tools",
    )


async def test_the_python_agent_calls_the_tool_and_the_api_through_the_component_abi(
    sandbox: Sandbox,
) -> None:
    services = ToolServices(SCRIPT)
    out = json.loads((await run_agent(sandbox, services, "python")).output)
    assert [(c.server, c.tool, c.arguments) for c in services.calls] == [("demo", "add", {"a": 2, "b": 3})]
    assert [(r.method, r.url, r.body) for r in services.requests] == [
        ("GET", f"{API}?q=Paris%20weather", b"")
    ]
    assert [s.get("result") for s in out["trace"]] == ["5", "HTTP 200: sunny"]
    assert out["answer"] == "5, and sunny"


async def test_a_denied_fetch_reaches_the_python_agent_as_denied(sandbox: Sandbox) -> None:
    services = ToolServices(SCRIPT, narrowed=True)
    out = json.loads((await run_agent(sandbox, services, "python")).output)
    step = out["trace"][1]
    assert (step["action"], step["error"], step["message"]) == (
        "http_get",
        "denied",
        "127.0.0.1 is not among this invocation's tools",
    )

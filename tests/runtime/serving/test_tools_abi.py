"""ABI 1.3 tools end to end from core modules (WAT inline): realm_mcp_list_tools and realm_mcp_call_tool
against a real MCP server (tests/mcp_server.py, the `mcp` SDK's own), realm_http_fetch against a loopback
HTTP server, through the runtime's own RuntimeHostServices, egress checks and invocation limits.

Loopback is refused by the address policy unless the platform lists it: these tests run the runtime
with `allowedCidrs: ["127.0.0.0/8"]`, as docs/egress.md says a test cluster would.

Each guest passes its input to one `realm` function REPEAT times and emits the last result: the JSON,
or for a failure "@" + chr(64 + code) ('S' = 19 denied ...), ":" and the pending error message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from mcp_server import WEATHER, McpServerHandle, mcp_server
from sandbox_builds import artifact_cache, cache_dir

from realm.runtime.api.schemas import invocation_tools
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox import Sandbox, component_binding, context
from realm.runtime.sandbox.abi import ABI_MINOR, ErrorCode, ToolCallPayload
from realm.runtime.sandbox.context import InvocationContext
from realm.runtime.serving.egress import EgressRuntime
from realm.runtime.serving.errors import EgressFailed
from realm.runtime.serving.invocations import RuntimeHostServices, run_admitted
from realm.runtime.serving.state import ServingState
from realm.runtime.spec.runtime_config import EgressConfig, TenantEntry
from realm.runtime.spec.tenant import mcp_secret_env
from realm.tenant_build import wit_dir

CALL_WAT = """
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "FUNC" (func $call (param i32 i32) (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 40)
  (func (export "realm_abi_version") (result i32) (i32.const VERSION))
  (func (export "realm_run") (result i32)
    (local $r i64) (local $n i32) (local $i i32)
    (local.set $n (call $read (i32.const 1024) (i32.wrap_i64 (call $input))))
    (loop $again
      (local.set $r (call $call (i32.add (i32.const 1024) (i32.const OFFSET))
                                (i32.add (local.get $n) (i32.const EXTRA))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const REPEAT))))
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (i32.store8 (i32.const 0) (i32.const 64))
        (i32.store8 (i32.const 1)
          (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
        (i32.store8 (i32.const 2) (i32.const 58))
        (drop (call $emit (i32.const 0) (i32.const 3)))
        (local.set $n (call $read (i32.const 1048576) (i32.const 1048576)))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then (drop (call $emit (i32.const 1048576) (local.get $n)))))
        (return (i32.const 0))))
    (local.set $n (call $read (i32.const 1048576) (i32.wrap_i64 (local.get $r))))
    (drop (call $emit (i32.const 1048576) (local.get $n)))
    (i32.const 0)))
"""

TOKEN = "Bearer t0ken-for-tests"
# MCP sessions outlive one test (they are reused across invocations): one loop for the fixtures and
# the tests alike.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def call_wasm(func: str, *, repeat: int = 1, offset: int = 0, extra: int = 0) -> bytes:
    """A guest calling `func` on its input; `offset`/`extra` move the range it passes (hostile cases)."""
    text = (
        CALL_WAT.replace("FUNC", func)
        .replace("VERSION", hex(0x10000 | ABI_MINOR))
        .replace("REPEAT", str(repeat))
        .replace("OFFSET", str(offset))
        .replace("EXTRA", str(extra))
    )
    return bytes(wasmtime.wat2wasm(text))


# ---- servers ------------------------------------------------------------------------------------


class _Api(BaseHTTPRequestHandler):
    """Stands for an external API: echoes the method, path and body it got."""

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _answer(self, body: bytes) -> None:
        payload = json.dumps({"method": self.command, "path": self.path, "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpServerHandle]:
    with mcp_server() as handle:
        yield handle


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(artifact_cache(), max_workers=4)
    yield sb
    sb.close()


def tenant(name: str, mcp_url: str, api_url: str, **quotas: Any) -> TenantEntry:
    return TenantEntry.model_validate(
        {
            "name": name,
            "spec": {
                "quotas": quotas,
                "egress": {
                    "allowedOutboundHosts": [api_url],
                    "mcpServers": [
                        {
                            "name": "tools",
                            "url": mcp_url,
                            "tools": ["add", "weather", "slow", "fail"],
                            "headersSecretRef": {"name": "mcp-token", "key": "token"},
                        },
                        # The cloud metadata endpoint: refused whatever allowedCidrs says.
                        {"name": "metadata", "url": "http://169.254.169.254/mcp", "tools": ["*"]},
                    ],
                },
            },
        }
    )


@pytest.fixture
async def state(
    sandbox: Sandbox, mcp: McpServerHandle, api_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ServingState]:
    for name in ("alpha", "slowpoke", "quick", "tiny"):
        monkeypatch.setenv(mcp_secret_env(name, "tools"), TOKEN)
    s = ServingState(models={}, metrics=Metrics())
    s.egress = EgressRuntime(EgressConfig(allowed_cidrs=["127.0.0.0/8"]))
    s.sandbox = sandbox
    s.apply_tenants(
        [
            tenant("alpha", mcp.url, api_url, toolCallsPerInvocation=2),
            # The invocation's deadline cuts a slow tool; the per-call timeout is longer.
            tenant("slowpoke", mcp.url, api_url, egressTimeoutMs=60_000),
            # The per-call timeout cuts it; the deadline is longer.
            tenant("quick", mcp.url, api_url, egressTimeoutMs=500),
            # Its invocations may take 16 bytes from outside: less than any tool result.
            tenant("tiny", mcp.url, api_url, egressBytesPerInvocation=16),
        ]
    )
    yield s
    await s.mcp.close()


async def call(
    state: ServingState,
    func: str,
    arg: object,
    *,
    who: str = "alpha",
    repeat: int = 1,
    tools: frozenset[str] | None = None,
    offset: int = 0,
    extra: int = 0,
) -> Any:
    """The JSON result, or (ErrorCode, message) for a failure."""
    assert state.sandbox is not None
    module = state.sandbox.load(who, call_wasm(func, repeat=repeat, offset=offset, extra=extra))
    data = arg if isinstance(arg, str) else json.dumps(arg)
    result = await run_admitted(state, state.tenants[who], module, data, lambda _: None, None, tools=tools)
    out = result.output
    if out.startswith("@"):
        return ErrorCode(ord(out[1]) - 64), out[3:]
    return json.loads(out)


def tool_call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"server": "tools", "tool": tool, "arguments": arguments}


# ---- MCP ----------------------------------------------------------------------------------------


async def test_list_tools_shows_only_the_allowed_ones(state: ServingState) -> None:
    tools = await call(state, "realm_mcp_list_tools", "tools")
    assert sorted(t["name"] for t in tools) == ["add", "fail", "slow", "weather"]  # not `secret`
    add = next(t for t in tools if t["name"] == "add")
    assert add["description"] == "Add two integers."
    assert add["input_schema"]["required"] == ["a", "b"]


async def test_call_tool_returns_text_and_content(state: ServingState, mcp: McpServerHandle) -> None:
    result = await call(state, "realm_mcp_call_tool", tool_call("weather", city="Lyon"))
    assert result == {
        "content": [{"type": "text", "text": f"Lyon: {WEATHER}"}],
        "text": f"Lyon: {WEATHER}",
        "is_error": False,
    }


async def test_the_specs_credential_is_the_authorization_header(
    state: ServingState, mcp: McpServerHandle
) -> None:
    before = len(mcp.auth)
    await call(state, "realm_mcp_call_tool", tool_call("add", a=2, b=3))
    assert set(mcp.auth[before:]) == {TOKEN}


async def test_a_tools_own_failure_is_a_result_marked_as_error(state: ServingState) -> None:
    result = await call(state, "realm_mcp_call_tool", tool_call("fail"))
    assert result["is_error"] is True


async def test_a_tool_not_allowed_is_denied_before_any_traffic(
    state: ServingState, mcp: McpServerHandle
) -> None:
    code, message = await call(state, "realm_mcp_call_tool", tool_call("secret"))
    assert code == ErrorCode.DENIED, message
    assert "secret" not in mcp.calls


async def test_an_unknown_server_is_not_found(state: ServingState) -> None:
    code, _ = await call(state, "realm_mcp_list_tools", "nowhere")
    assert code == ErrorCode.NOT_FOUND
    code, _ = await call(state, "realm_mcp_call_tool", {"server": "nowhere", "tool": "add", "arguments": {}})
    assert code == ErrorCode.NOT_FOUND


async def test_a_server_on_a_forbidden_address_is_denied(state: ServingState) -> None:
    code, message = await call(state, "realm_mcp_list_tools", "metadata")
    assert code == ErrorCode.DENIED, message


async def test_sessions_are_reused_across_invocations(state: ServingState) -> None:
    await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=1))
    session = state.mcp._sessions[("alpha", "tools")]
    await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=2))
    assert state.mcp._sessions[("alpha", "tools")] is session


async def test_a_slow_tool_is_cut_at_the_invocations_deadline(state: ServingState) -> None:
    """slowpoke's calls may take 60 s each, but its invocation has 1 s left: the call ends then."""
    services = RuntimeHostServices(state)
    services.remaining = lambda: 1.0
    started = time.monotonic()
    with pytest.raises(EgressFailed) as failed:
        await services.mcp_call_tool(
            "slowpoke", ToolCallPayload(server="tools", tool="slow", arguments={"seconds": 60})
        )
    assert failed.value.code == "timeout"
    assert time.monotonic() - started < 30  # the tool sleeps 60 s


async def test_a_slow_tool_is_cut_at_the_call_timeout(state: ServingState) -> None:
    code, message = await call(state, "realm_mcp_call_tool", tool_call("slow", seconds=60), who="quick")
    assert code == ErrorCode.TIMED_OUT, message


async def test_calls_over_the_invocations_limit_are_refused(state: ServingState) -> None:
    """alpha may make 2 outbound calls per invocation: the third is refused, the next invocation
    starts afresh."""
    code, message = await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=2), repeat=3)
    assert code == ErrorCode.LIMIT_EXCEEDED, message
    # A tool refused by the spec costs no call.
    code, message = await call(state, "realm_mcp_call_tool", tool_call("secret"), repeat=3)
    assert code == ErrorCode.DENIED, message
    assert (await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=2), repeat=2))["text"] == "3"


async def test_an_invocation_given_other_tools_is_denied(state: ServingState, mcp: McpServerHandle) -> None:
    before = len(mcp.calls)
    code, message = await call(
        state, "realm_mcp_call_tool", tool_call("add", a=1, b=2), tools=frozenset({"other"})
    )
    assert code == ErrorCode.DENIED and "X-Realm-Tools" in message
    assert len(mcp.calls) == before
    given = await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=2), tools=frozenset({"tools"}))
    assert given["text"] == "3"


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("{not json", ErrorCode.INVALID_ARGUMENT),
        ({"server": "tools", "tool": "add", "arguments": [1, 2]}, ErrorCode.INVALID_ARGUMENT),
        ({"server": "tools", "tool": "add", "arguments": "{}"}, ErrorCode.INVALID_ARGUMENT),
        ({"server": "tools", "tool": "add", "arguments": {}, "extra": 1}, ErrorCode.INVALID_ARGUMENT),
        ({"server": "tools", "tool": "", "arguments": {}}, ErrorCode.INVALID_ARGUMENT),
        ({"server": "tools", "tool": "add", "arguments": {"a": "x" * 1_100_000}}, ErrorCode.TOO_LARGE),
    ],
)
async def test_hostile_tool_calls(
    state: ServingState, mcp: McpServerHandle, arg: object, expected: ErrorCode
) -> None:
    before = len(mcp.calls)
    code, _ = await call(state, "realm_mcp_call_tool", arg)
    assert code == expected
    assert len(mcp.calls) == before


async def test_a_range_outside_memory_is_out_of_bounds(state: ServingState) -> None:
    code, _ = await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=2), offset=40 * 65536)
    assert code == ErrorCode.OUT_OF_BOUNDS


# ---- http-fetch ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_http_fetch_reaches_an_allowed_loopback_server(state: ServingState, api_url: str) -> None:
    response = await call(
        state,
        "realm_http_fetch",
        {"method": "POST", "url": f"{api_url}/v1/echo?x=1", "headers": [["X-Test", "1"]], "body": b64(b"hi")},
    )
    assert response["status"] == 200
    assert json.loads(base64.b64decode(response["body"])) == {
        "method": "POST",
        "path": "/v1/echo?x=1",
        "body": "hi",
    }


async def test_http_fetch_to_a_host_off_the_allowlist_is_denied(state: ServingState) -> None:
    code, message = await call(
        state, "realm_http_fetch", {"method": "GET", "url": "http://169.254.169.254/latest"}
    )
    assert code == ErrorCode.DENIED, message


async def test_http_fetch_narrowed_to_another_host_is_denied(state: ServingState, api_url: str) -> None:
    code, message = await call(
        state, "realm_http_fetch", {"method": "GET", "url": api_url}, tools=frozenset({"api.example.com"})
    )
    assert code == ErrorCode.DENIED and "X-Realm-Tools" in message
    given = await call(
        state, "realm_http_fetch", {"method": "GET", "url": api_url}, tools=frozenset({"127.0.0.1"})
    )
    assert given["status"] == 200


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ({"method": "GET", "url": "http://x/", "body": "not base64!"}, ErrorCode.INVALID_ARGUMENT),
        (
            {"method": "GET", "url": "http://x/", "headers": [["X-A", "b\r\nHost: evil"]]},
            ErrorCode.INVALID_ARGUMENT,
        ),
        ({"method": "GET", "url": "http://x/", "headers": [["X-A", "b"]] * 65}, ErrorCode.INVALID_ARGUMENT),
        ({"method": "BREW", "url": "http://x/"}, ErrorCode.INVALID_ARGUMENT),
        ({"method": "GET", "url": "http://x/" + "a" * 9000}, ErrorCode.INVALID_ARGUMENT),
        ({"method": "GET", "url": "http://x/", "body": b64(b"x" * 800_000)}, ErrorCode.TOO_LARGE),
    ],
)
async def test_hostile_fetches(state: ServingState, arg: object, expected: ErrorCode) -> None:
    code, _ = await call(state, "realm_http_fetch", arg)
    assert code == expected


# ---- X-Realm-Tools ------------------------------------------------------------------------------


async def test_the_tools_header_lists_names() -> None:
    assert invocation_tools({}) is None
    assert invocation_tools({"x-realm-tools": ""}) == frozenset()
    assert invocation_tools({"x-realm-tools": " Tools , api.example.com,"}) == {"tools", "api.example.com"}
    with pytest.raises(ValueError, match="more than"):
        invocation_tools({"x-realm-tools": ",".join(f"s{i}" for i in range(65))})
    with pytest.raises(ValueError, match="not a server name"):
        invocation_tools({"x-realm-tools": "a b"})


# ---- the component binding: WIT values over the same host code ---------------------------------


def _component_calls(state: ServingState, loop: asyncio.AbstractEventLoop, *calls: Any) -> list[Any]:
    """Run the component binding's host functions on this (worker) thread, as a component's calls
    would be, for an invocation of alpha's."""
    ctx = InvocationContext(
        tenant="alpha",
        input_data="",
        services=RuntimeHostServices(state),
        loop=loop,
        on_output=lambda _: None,
    )
    with context.bound(ctx):
        return [func(None, *args) for func, *args in calls]


async def test_components_get_wit_records(state: ServingState) -> None:
    ok, listed = await asyncio.to_thread(
        _component_calls,
        state,
        asyncio.get_running_loop(),
        (component_binding._call_tool, "tools", "add", '{"a": 2, "b": 3}'),
        (component_binding._list_tools, "tools"),
    )
    assert ok.tag == "ok"
    assert (ok.payload.text, getattr(ok.payload, "is-error")) == ("5", False)
    assert json.loads(ok.payload.content) == [{"type": "text", "text": "5"}]
    assert sorted(t.name for t in listed) == ["add", "fail", "slow", "weather"]
    add = next(t for t in listed if t.name == "add")
    assert json.loads(getattr(add, "input-schema"))["required"] == ["a", "b"]


async def test_components_get_tool_error_codes(state: ServingState) -> None:
    denied, not_object, missing = await asyncio.to_thread(
        _component_calls,
        state,
        asyncio.get_running_loop(),
        (component_binding._call_tool, "tools", "secret", "{}"),
        (component_binding._call_tool, "tools", "add", "[1, 2]"),
        (component_binding._list_tools, "nowhere"),
    )
    assert (denied.tag, denied.payload.code) == ("err", "denied")
    assert (not_object.tag, not_object.payload.code) == ("err", "invalid-argument")
    assert missing.code == "not-found"  # result<list<...>, tool-error> is untagged: the record is the error


# ---- sessions -----------------------------------------------------------------------------------


async def test_a_session_is_closed_when_its_server_changes(state: ServingState, api_url: str) -> None:
    await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=1))
    assert ("alpha", "tools") in state.mcp._sessions
    state.apply_tenants([tenant("alpha", "http://127.0.0.1:9/mcp", api_url)])
    assert ("alpha", "tools") not in state.mcp._sessions


async def test_an_idle_session_is_closed(state: ServingState) -> None:
    state.mcp.idle_s = 0.2
    await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=1))
    end = time.monotonic() + 10
    while ("alpha", "tools") in state.mcp._sessions and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert ("alpha", "tools") not in state.mcp._sessions


async def test_calls_are_counted_in_the_egress_metrics(state: ServingState) -> None:
    await call(state, "realm_mcp_call_tool", tool_call("secret"))
    await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=1))
    counter = state.metrics.egress_requests
    assert counter.labels("alpha", "denied")._value.get() == 1
    assert counter.labels("alpha", "ok")._value.get() == 1


# ---- a real component (componentize-py, the generated bindings only) ----------------------------

# Input: the loopback API's URL. Lists the server's tools, calls `add`, calls a tool not allowed,
# fetches the API, and emits what came back.
COMPONENT_APP = """
import json
from componentize_py_types import Err
from wit_world.imports import host, tools


def attempt(f):
    try:
        return {"ok": f()}
    except Err as e:
        return {"err": e.value.code.name}


class WitWorld:
    def run(self) -> None:
        url = host.input()
        listed = attempt(lambda: sorted(t.name for t in tools.list_tools("tools")))
        added = attempt(lambda: vars(tools.call_tool("tools", "add", '{"a": 2, "b": 3}')))
        secret = attempt(lambda: vars(tools.call_tool("tools", "secret", "{}")))
        request = tools.HttpRequest("POST", url, [tools.Header("X-Test", "1")], b"hi")
        fetched = attempt(lambda: [tools.http_fetch(request).status, tools.http_fetch(request).body.decode()])
        host.emit(json.dumps({"list": listed, "add": added, "secret": secret, "fetch": fetched}))
"""


def build_tools_component() -> Path:
    """COMPONENT_APP built for the tenant world with componentize-py, cached like sandbox_builds'."""
    h = hashlib.sha256(f"{metadata.version('componentize-py')}\0{COMPONENT_APP}".encode())
    for path in sorted(wit_dir().rglob("*.wit")):
        h.update(path.read_bytes())
    out = cache_dir() / f"tools-app-{h.hexdigest()[:20]}.wasm"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="realm-tools-app-") as tmp:
        (Path(tmp) / "app.py").write_text(COMPONENT_APP)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        partial = Path(tmp) / "out.wasm"
        cli = Path(sys.executable).parent / "componentize-py"
        args = ["-q", "-d", str(wit_dir()), "-w", "tenant", "componentize", "app"]
        subprocess.run([str(cli), *args, "-p", tmp, "-o", str(partial)], check=True, cwd=tmp, env=env)
        os.replace(partial, out)
    return out


async def test_a_component_calls_tools_and_fetches(state: ServingState, api_url: str) -> None:
    assert state.sandbox is not None
    module = state.sandbox.load("slowpoke", build_tools_component().read_bytes())
    result = await run_admitted(
        state, state.tenants["slowpoke"], module, f"{api_url}/x", lambda _: None, None
    )
    out = json.loads(result.output)
    assert out["list"] == {"ok": ["add", "fail", "slow", "weather"]}
    assert out["add"]["ok"]["text"] == "5"
    assert json.loads(out["add"]["ok"]["content"]) == [{"type": "text", "text": "5"}]
    assert out["secret"] == {"err": "DENIED"}
    status, body = out["fetch"]["ok"]
    assert (status, json.loads(body)) == (200, {"method": "POST", "path": "/x", "body": "hi"})


async def test_a_rotated_credential_reaches_the_server(
    state: ServingState, mcp: McpServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session opened with the old credential is not reused: the next call sends the new one."""
    await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=1))
    monkeypatch.setenv(mcp_secret_env("alpha", "tools"), "Bearer rotated")
    before = len(mcp.auth)
    assert (await call(state, "realm_mcp_call_tool", tool_call("add", a=1, b=1)))["text"] == "2"
    assert "Bearer rotated" in mcp.auth[before:]


async def test_a_result_over_the_invocations_bytes_is_refused(state: ServingState) -> None:
    code, message = await call(state, "realm_mcp_call_tool", tool_call("weather", city="Lyon"), who="tiny")
    assert code == ErrorCode.LIMIT_EXCEEDED, message


async def test_a_tool_list_over_the_invocations_bytes_is_refused(state: ServingState) -> None:
    code, message = await call(state, "realm_mcp_list_tools", "tools", who="tiny")
    assert code == ErrorCode.LIMIT_EXCEEDED, message

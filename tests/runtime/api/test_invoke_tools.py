"""X-Realm-Tools over HTTP against the real runtime (no models: the guest only calls tools): the route
parses the header, serving enforces it. The guest lists the tools of the MCP server its input names
(tests/mcp_server.py, the `mcp` SDK's own server on loopback) and emits the result, or "@" + chr(64 +
code) for a failure."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import wasmtime
from mcp_server import McpServerHandle, mcp_server
from runtime_thread import running

from realm.runtime.sandbox.abi import ABI_MINOR, ErrorCode
from realm.runtime.spec.runtime_config import hash_api_key

KEY = "sk-invoke-tools-0123456789"

LIST_TOOLS = f"""(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_mcp_list_tools" (func $list (param i32 i32) (result i64)))
  (memory (export "memory") 32)
  (func (export "realm_abi_version") (result i32) (i32.const {hex(0x10000 | ABI_MINOR)}))
  (func (export "realm_run") (result i32) (local $n i32) (local $r i64)
    ;; the input is a JSON string: the server's name without its quotes
    (local.set $n (i32.wrap_i64 (call $input)))
    (drop (call $read (i32.const 65536) (local.get $n)))
    (local.set $r (call $list (i32.const 65537) (i32.sub (local.get $n) (i32.const 2))))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then
      (i32.store8 (i32.const 1024) (i32.const 64))
      (i32.store8 (i32.const 1025)
        (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
      (drop (call $emit (i32.const 1024) (i32.const 2)))
      (return (i32.const 0))))
    (local.set $n (call $read (i32.const 1048576) (i32.wrap_i64 (local.get $r))))
    (drop (call $emit (i32.const 1048576) (local.get $n)))
    (i32.const 0)))
"""


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpServerHandle]:
    with mcp_server() as handle:
        yield handle


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, mcp: McpServerHandle) -> Iterator[str]:
    path = tmp_path_factory.mktemp("invoke-tools") / "config.json"
    spec = {"egress": {"mcpServers": [{"name": "tools", "url": mcp.url, "tools": ["add"]}]}}
    doc = {
        "egress": {"allowedCidrs": ["127.0.0.0/8"]},
        "tenants": [{"name": "alpha", "apiKeySha256": [hash_api_key(KEY)], "spec": spec}],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        put = httpx.put(
            f"{rt.base_url}/v1/tenants/alpha/module",
            content=bytes(wasmtime.wat2wasm(LIST_TOOLS)),
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert put.status_code == 200, put.text
        yield rt.base_url


def invoke(base: str, tools: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    if tools is not None:
        headers["X-Realm-Tools"] = tools
    return httpx.post(f"{base}/v1/tenants/alpha/invoke", json="tools", headers=headers, timeout=60)


def test_without_the_header_the_specs_tools_are_reached(base: str) -> None:
    r = invoke(base, None)
    assert r.status_code == 200, r.text
    assert [t["name"] for t in r.json()] == ["add"]


def test_a_server_the_header_does_not_name_is_denied(base: str) -> None:
    r = invoke(base, "weather-api, api.example.com")
    assert r.status_code == 200, r.text
    assert r.json() == {"output": f"@{chr(64 + ErrorCode.DENIED)}"}


def test_a_malformed_header_is_refused(base: str) -> None:
    r = invoke(base, "a b")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_tools_header"

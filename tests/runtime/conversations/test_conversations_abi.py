"""Conversations from tenant WebAssembly (ABI 1.1): a WAT core module for the `realm` functions'
edges, the Go and Python `convo` examples, and components built for 1.0 still running.

The host side is the runtime's own `RuntimeHostServices` over a real SQLite store, so tenant
scoping is the production code's; only `generate` is a fake (deterministic replies, no model).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from go_builds import GoUnavailable, build_go_example
from sandbox_builds import ROOT, build_source

from realm.runtime.api.state import AppState
from realm.runtime.conversations import Message
from realm.runtime.conversations.models import new_id
from realm.runtime.conversations.sqlite_store import SqliteConversationStore
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox import InvocationFailed, Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import (
    ABI_MINOR,
    WIT_CONVERSATIONS_INTERFACE,
    ErrorCode,
    GenerateParams,
    GenerationPayload,
    InvocationErrorCode,
)
from realm.runtime.sandbox.context import InvocationContext
from realm.runtime.serving.conversations import conversation_store
from realm.runtime.serving.invocations import RuntimeHostServices
from realm.runtime.spec.runtime_config import TenantEntry


class Services(RuntimeHostServices):
    """The runtime's host services with a fake `generate`: replies name the turn and the prompt's
    length, and every prompt is kept (to see that the history reached it)."""

    def __init__(self, state: AppState) -> None:
        super().__init__(state)
        self.prompts: list[str] = []

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        self.prompts.append(params.prompt)
        return GenerationPayload(
            text=f" reply {len(self.prompts)} ", finish_reason="stop", prompt_tokens=1, completion_tokens=2
        )


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    state = AppState(models={}, metrics=Metrics())
    state.conversations = SqliteConversationStore(tmp_path / "c.sqlite")
    state.apply_tenants([TenantEntry(name="alpha"), TenantEntry(name="beta")])
    yield Services(state)
    await state.conversations.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("conv-wasm-cache"), max_workers=4)
    yield sb
    sb.close()


async def invoke(
    sandbox: Sandbox, wasm: bytes, tenant: str, input_data: str, services: Services
) -> tuple[str, InvocationContext]:
    module = sandbox.load(tenant, wasm)
    ctx = InvocationContext(
        tenant=tenant,
        input_data=input_data,
        services=services,
        loop=asyncio.get_running_loop(),
        on_output=lambda _: None,
    )
    result = await sandbox.invoke(module, ctx, SandboxLimits())
    return result.output, ctx


# ---- the core functions, from WAT ---------------------------------------------------------------

# Passes its input to one `realm` function and emits the result: the JSON, or for a failure
# "@" + code as a letter ('A' = 1 ... 'N' = 14), ":" and the pending error message.
CALL_WAT = """
(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "FUNC" (func $call (param i32 i32) (result RESULT)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 40)
  (func (export "realm_abi_version") (result i32) (i32.const VERSION))
  (func (export "realm_run") (result i32)
    (local $r i64) (local $n i32)
    (local.set $n (call $read (i32.const 1024) (i32.wrap_i64 (call $input))))
    (local.set $r CALL)
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (i32.store8 (i32.const 0)
          (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
        (i32.store8 (i32.const 1) (i32.const 58))
        (drop (call $emit (i32.const 0) (i32.const 2)))
        (local.set $n (call $read (i32.const 1048576) (i32.const 1048576)))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then (drop (call $emit (i32.const 1048576) (local.get $n)))))
        (return (i32.const 0))))
    (if (i64.gt_s (local.get $r) (i64.const 0))
      (then
        (local.set $n (call $read (i32.const 1048576) (i32.wrap_i64 (local.get $r))))
        (drop (call $emit (i32.const 1048576) (local.get $n)))))
    (i32.const 0)))
"""


def call_wasm(func: str, version: int = 0x10000 | ABI_MINOR) -> bytes:
    deletes = func == "realm_conversation_delete"  # the one returning i32 (0 or -code), no result
    call_expr = "(call $call (i32.const 1024) (local.get $n))"
    text = (
        CALL_WAT.replace("FUNC", func)
        .replace("RESULT", "i32" if deletes else "i64")
        .replace("CALL", f"({'i64.extend_i32_s ' if deletes else ''}{call_expr})" if deletes else call_expr)
        .replace("VERSION", hex(version))
    )
    return bytes(wasmtime.wat2wasm(text))


async def call(sandbox: Sandbox, services: Services, func: str, arg: object, tenant: str = "alpha") -> Any:
    """The JSON result, or (ErrorCode, message) for a failure."""
    data = arg if isinstance(arg, str) else json.dumps(arg)
    out, _ = await invoke(sandbox, call_wasm(f"realm_conversation_{func}"), tenant, data, services)
    if out.startswith("@") or (out[:1].isalpha() and out[1:2] == ":"):
        return ErrorCode(ord(out[0]) - 64), out[2:]
    return json.loads(out) if out else None


async def test_create_get_put_with_cas(sandbox: Sandbox, services: Services) -> None:
    created = await call(
        sandbox,
        services,
        "create",
        {"metadata": {"a": "b"}, "messages": [{"role": "user", "content": "hi"}], "state": "s1"},
    )
    assert created["version"] == 1 and created["metadata"] == {"a": "b"} and created["state"] == "s1"
    assert created["messages"] == [{"role": "user", "content": "hi", "name": None}]
    assert created["kv_key"] is None
    cid = created["id"]
    assert await call(sandbox, services, "get", cid) == created

    turn = {"id": cid, "expected_version": 1, "append": [{"role": "assistant", "content": "hello"}]}
    put = await call(sandbox, services, "put", turn)
    assert put["version"] == 2 and len(put["messages"]) == 2 and put["state"] == "s1"  # state absent: kept

    # The same expected version again: a conflict, with the version that won, and nothing written.
    code, message = await call(sandbox, services, "put", turn)
    assert code == ErrorCode.CONFLICT and "version 2" in message
    assert (await call(sandbox, services, "get", cid))["version"] == 2

    # No expected version: onto whatever is current. state null: cleared.
    put = await call(sandbox, services, "put", {"id": cid, "state": None, "metadata": {"c": "d"}})
    assert (put["version"], put["state"], put["metadata"]) == (3, None, {"c": "d"})

    assert await call(sandbox, services, "delete", cid) is None
    code, _ = await call(sandbox, services, "get", cid)
    assert code == ErrorCode.NOT_FOUND


async def test_another_tenants_conversation_is_not_found(sandbox: Sandbox, services: Services) -> None:
    """The guest never names a tenant: the invocation's own scopes every call."""
    cid = (await call(sandbox, services, "create", {"state": "alpha's"}, tenant="alpha"))["id"]
    for func, arg in (
        ("get", cid),
        ("put", {"id": cid, "state": "beta's now"}),
        ("put", {"id": cid, "expected_version": 1, "append": [{"role": "user", "content": "x"}]}),
        ("delete", cid),
        ("get", new_id()),  # a guess
        ("get", "../alpha/conversations/" + cid),
    ):
        code, _ = await call(sandbox, services, func, arg, tenant="beta")
        assert code == ErrorCode.NOT_FOUND, (func, arg)
    c = await call(sandbox, services, "get", cid, tenant="alpha")
    assert (c["version"], c["state"]) == (1, "alpha's")


async def test_bad_arguments(sandbox: Sandbox, services: Services) -> None:
    cid = (await call(sandbox, services, "create", {}))["id"]
    cases = [
        ("create", "{not json", ErrorCode.INVALID_ARGUMENT),
        ("create", {"messages": [{"role": "tool", "content": "x"}]}, ErrorCode.INVALID_ARGUMENT),
        ("create", {"metadata": {f"k{i}": "v" for i in range(17)}}, ErrorCode.INVALID_ARGUMENT),
        # A tenant cannot point its conversation at a KV snapshot: the runtime sets that key.
        ("put", {"id": cid, "kv_key": "kv/other-tenant/x"}, ErrorCode.INVALID_ARGUMENT),
        ("put", {"id": cid, "expected_version": 0}, ErrorCode.INVALID_ARGUMENT),
        ("put", {"id": cid, "state": "x" * 600_000}, ErrorCode.TOO_LARGE),  # over the store's 512 KiB
        ("put", {"id": cid, "state": "x" * 1_100_000}, ErrorCode.TOO_LARGE),  # over the 1 MiB argument
    ]
    for func, arg, expected in cases:
        code, message = await call(sandbox, services, func, arg)
        assert code == expected, (func, str(arg)[:80], message)
    assert (await call(sandbox, services, "get", cid))["version"] == 1


async def test_without_a_store_the_calls_are_unavailable(sandbox: Sandbox) -> None:
    services = Services(AppState(models={}, metrics=Metrics()))
    code, message = await call(sandbox, services, "create", {})
    assert code == ErrorCode.UNAVAILABLE and "not enabled" in message


async def test_abi_versions(sandbox: Sandbox, services: Services) -> None:
    assert sandbox.load("alpha", call_wasm("realm_conversation_get")).abi_version == (1, ABI_MINOR)
    # A module built for 1.0 may still import the new functions: this host has them.
    assert sandbox.load("alpha", call_wasm("realm_conversation_get", 0x10000)).abi_version == (1, 0)
    with pytest.raises(InvocationFailed) as info:
        sandbox.load("alpha", call_wasm("realm_conversation_get", 0x10000 | (ABI_MINOR + 1)))
    assert info.value.code == InvocationErrorCode.ABI_UNSUPPORTED
    _, ctx = await invoke(sandbox, call_wasm("realm_conversation_create"), "alpha", "{}", services)
    assert ctx.host_calls["conversation_create"] == 1


# ---- a component built for ABI 1.0 ------------------------------------------------------------------

# realm:tenant/host@1.0.0 with only `emit` imported (an instance may offer more than is imported),
# no conversations: the host's 1.1 linker must still serve it.
COMPONENT_1_0 = """
(component
  (type $host (instance (export "emit" (func (param "chunk" string)))))
  (import "realm:tenant/host@1.0.0" (instance $h (type $host)))
  (core module $mem (memory (export "memory") 1) (data (i32.const 0) "made for 1.0"))
  (core instance $m (instantiate $mem))
  (core func $emit (canon lower (func $h "emit") (memory (core memory $m "memory"))))
  (core module $main
    (import "host" "emit" (func $emit (param i32 i32)))
    ;; result<_, string> is returned through memory: address 64 holds 0, the `ok` case.
    (func (export "run") (result i32) (call $emit (i32.const 0) (i32.const 12)) (i32.const 64)))
  (core instance $i (instantiate $main (with "host" (instance (export "emit" (func $emit))))))
  (func (export "run") (result (result (error string)))
    (canon lift (core func $i "run") (memory (core memory $m "memory")))))
"""


async def test_a_component_built_for_1_0_still_runs(sandbox: Sandbox, services: Services) -> None:
    out, _ = await invoke(sandbox, bytes(wasmtime.wat2wasm(COMPONENT_1_0)), "alpha", "{}", services)
    assert out == "made for 1.0"


# ---- the Go and Python examples ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def go_convo() -> bytes:
    try:
        return build_go_example("convo").read_bytes()
    except GoUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"Go toolchain unavailable: {e}")


@pytest.fixture(scope="module")
def python_convo() -> bytes:
    return build_source("convo", ROOT / "sdk" / "python" / "examples" / "convo").read_bytes()


@pytest.mark.parametrize("language", ["go", "python"])
async def test_convo_example(
    language: str, sandbox: Sandbox, services: Services, request: pytest.FixtureRequest
) -> None:
    wasm: bytes = request.getfixturevalue(f"{language}_convo")

    async def turn(tenant: str = "alpha", **body: object) -> dict[str, Any]:
        out, _ = await invoke(sandbox, wasm, tenant, json.dumps(body), services)
        result: dict[str, Any] = json.loads(out)
        return result

    first = await turn(message="My name is Ada.")
    cid = first["conversation"]
    assert first == {
        "conversation": cid,
        "version": 2,
        "reply": "reply 1",
        "messages": 2,
        "conflicts": 0,
        "turns": 1,
    }
    second = await turn(message="What is my name?", conversation=cid)
    assert (second["version"], second["messages"], second["turns"]) == (3, 4, 2)
    assert "My name is Ada." in services.prompts[-1] and "reply 1" in services.prompts[-1]

    # Read at a stale version: the put conflicts, the module re-reads and redoes the turn on top.
    third = await turn(message="And now?", conversation=cid, expected_version=1)
    assert (third["conflicts"], third["version"], third["messages"], third["turns"]) == (1, 4, 6, 3)
    assert services.state.conversations is not None
    stored = await conversation_store(services.state).get("alpha", cid)
    assert [m.content for m in stored.messages] == [
        "My name is Ada.",
        "reply 1",
        "What is my name?",
        "reply 2",
        "And now?",
        "reply 4",  # reply 3 was computed on the stale history and never written
    ]
    assert stored.metadata == {"by": "convo"} and json.loads(stored.state or "") == {"turns": 3}

    assert await turn("beta", message="Whose is this?", conversation=cid) == {"error": "not_found"}
    assert (await conversation_store(services.state).get("alpha", cid)).version == 4


async def test_the_python_sdk_sees_kv_keys_and_deletes(
    sandbox: Sandbox, services: Services, python_convo: bytes
) -> None:
    """What the runtime writes (the KV key) reaches the guest read-only, through the same record."""
    store = conversation_store(services.state)
    c = await store.create("alpha", messages=[Message(role="user", content="hi")])
    await store.update("alpha", c.id, expected_version=1, kv_key="kv/alpha/abc")
    out, _ = await invoke(
        sandbox, python_convo, "alpha", json.dumps({"message": "next", "conversation": c.id}), services
    )
    assert json.loads(out)["version"] == 3
    assert (await store.get("alpha", c.id)).kv_key == "kv/alpha/abc"  # a guest's put keeps it


def test_the_wit_declares_the_interface() -> None:
    wit = (ROOT / "runtime" / "sandbox" / "wit" / "tenant.wit").read_text()
    version = WIT_CONVERSATIONS_INTERFACE.rsplit("@", 1)[1]
    assert f"package realm:tenant@{version};" in wit and "interface conversations {" in wit

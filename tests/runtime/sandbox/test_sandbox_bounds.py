"""What one invocation can grow is bounded: its output bytes, its linear memories (one per core
module) and the memory of its Store as a whole. Guests are WAT files in tests/wat/ on the real
sandbox; nothing behind HostServices is called."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import wasmtime
from repo_paths import WAT

from realm.runtime.api.errors import invocation_status
from realm.runtime.sandbox import InvocationFailed, Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import InvocationErrorCode
from realm.runtime.sandbox.context import InvocationContext

MIB = 1 << 20


def wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text()))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("wasm-cache"), max_workers=2)
    yield sb
    sb.close()


def make_ctx(streamed: list[str]) -> InvocationContext:
    return InvocationContext(
        tenant="acme",
        input_data="",
        services=None,  # type: ignore[arg-type]  # these guests make no service calls
        loop=asyncio.get_running_loop(),
        on_output=streamed.append,
    )


async def test_output_past_its_cap_ends_the_invocation(sandbox: Sandbox) -> None:
    # emit_flood emits 64 KiB chunks forever and ignores realm_emit's answer.
    module = sandbox.load("acme", wasm("emit_flood"))
    streamed: list[str] = []
    limits = SandboxLimits(deadline_ms=30_000, max_output_bytes=MIB)
    with pytest.raises(InvocationFailed) as info:
        await asyncio.wait_for(sandbox.invoke(module, make_ctx(streamed), limits), 60)
    assert info.value.code == InvocationErrorCode.OUTPUT_LIMIT
    assert invocation_status(info.value.code) == 422
    assert sum(len(chunk) for chunk in streamed) == MIB  # sixteen chunks, not one more


def test_a_core_module_with_two_memories_is_refused_at_load(sandbox: Sandbox) -> None:
    with pytest.raises(InvocationFailed) as info:
        sandbox.load("acme", wasm("two_memories"))
    assert info.value.code == InvocationErrorCode.INVALID_MODULE
    assert "defines 2 linear memories; a core module may have one" in info.value.message


async def test_tables_and_memory_share_the_stores_memory_budget(sandbox: Sandbox) -> None:
    # memory_bomb grows its memory 1 MiB at a time while it can. With one table allowed to grow
    # to 1 MiB of elements, the memory gets what is left of the 8 MiB budget, not all of it.
    module = sandbox.load("acme", wasm("memory_bomb"))
    table_bytes = 131_072 * 8
    limits = SandboxLimits(memory_mib=8, table_elements=131_072, instances=1)
    result = await sandbox.invoke(module, make_ctx([]), limits)
    assert result.memory_peak_bytes + table_bytes <= 8 * MIB


# Two core modules, each growing its memory by 40 MiB (640 pages): one in `run`, one in its start
# function. Each alone fits a 64 MiB budget; together they do not.
TWO_GROWING_MEMORIES = """
(component
  (import "realm:tenant/host@1.1.0" (instance))
  (core module $main
    (memory (export "mem") 1)
    (func (export "run") (result i32)
      (if (i32.eq (memory.grow (i32.const 640)) (i32.const -1)) (then unreachable))
      (i32.store (i32.const 0) (i32.const 0))
      i32.const 0))
  (core module $other
    (memory 1)
    (func $grow (if (i32.eq (memory.grow (i32.const 640)) (i32.const -1)) (then unreachable)))
    (start $grow))
  (core instance $m (instantiate $main))
  (core instance $o (instantiate $other))
  (func (export "run") (result (result (error string)))
    (canon lift (core func $m "run") (memory (core memory $m "mem"))))
)
"""

# One core module with a memory, instantiated twice: two memories from one definition.
ONE_MEMORY_TWICE = """
(component
  (import "realm:tenant/host@1.1.0" (instance))
  (core module $main
    (memory (export "mem") 1)
    (func (export "run") (result i32) (i32.store (i32.const 0) (i32.const 0)) i32.const 0))
  (core instance $a (instantiate $main))
  (core instance $b (instantiate $main))
  (func (export "run") (result (result (error string)))
    (canon lift (core func $a "run") (memory (core memory $a "mem"))))
)
"""


async def test_a_components_memories_share_the_budget_instead_of_each_having_it(sandbox: Sandbox) -> None:
    module = sandbox.load("acme", bytes(wasmtime.wat2wasm(TWO_GROWING_MEMORIES)))
    assert module.memories == 2
    with pytest.raises(InvocationFailed) as info:
        await sandbox.invoke(module, make_ctx([]), SandboxLimits(memory_mib=64))
    assert info.value.code == InvocationErrorCode.TRAP  # memory.grow failed at 32 MiB each
    # The same component runs when the budget holds both.
    assert (await sandbox.invoke(module, make_ctx([]), SandboxLimits(memory_mib=96))).output == ""


async def test_a_component_cannot_make_more_memories_than_it_defines(sandbox: Sandbox) -> None:
    module = sandbox.load("acme", bytes(wasmtime.wat2wasm(ONE_MEMORY_TWICE)))
    assert module.memories == 1
    with pytest.raises(InvocationFailed) as info:
        await sandbox.invoke(module, make_ctx([]), SandboxLimits(memory_mib=64))
    assert info.value.code == InvocationErrorCode.RESOURCE_LIMIT
    assert "memory count" in info.value.message


async def test_pre_linked_modules_are_kept_only_for_deployed_modules(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A tenant redeploying distinct modules (or modules invoked without being deployed) once grew
    # the sandbox's pre-link dict without bound, each entry holding its compiled module.
    sb = Sandbox(tmp_path_factory.mktemp("wasm-cache"), max_workers=2)
    try:
        echo = wasm("echo")
        for n in range(3):
            module = sb.deploy("acme", echo + custom_section(f"build-{n}"))
            await sb.invoke(module, make_ctx([]), SandboxLimits())
            assert sb.instance_pres == 1
        stray = sb.load("other", echo + custom_section("never-deployed"))
        await sb.invoke(stray, make_ctx([]), SandboxLimits())
        assert sb.instance_pres == 1
        sb.remove("acme")
        assert sb.instance_pres == 0
    finally:
        sb.close()


def custom_section(text: str) -> bytes:
    """A custom section (id 0) appended to a module: same code, distinct bytes and sha256."""
    name = b"realm-test"
    payload = bytes([len(name)]) + name + text.encode()
    assert len(payload) < 128
    return bytes([0, len(payload)]) + payload

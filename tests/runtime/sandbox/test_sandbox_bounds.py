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

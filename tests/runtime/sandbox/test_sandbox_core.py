"""The WebAssembly sandbox with core modules: loading, the `realm` host functions, limits and
hostile guests. Fixtures are WAT files in tests/wat/, compiled with wasmtime.wat2wasm."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import wasmtime
from repo_paths import WAT

from realm.runtime.api.errors import invocation_status
from realm.runtime.sandbox import InvocationFailed, InvocationResult, Sandbox, SandboxLimits, TenantModule
from realm.runtime.sandbox.abi import (
    ABI_MINOR,
    ErrorCode,
    GenerateParams,
    GenerationPayload,
    HostError,
    InvocationErrorCode,
    ModelInfoPayload,
)
from realm.runtime.sandbox.context import InvocationContext

INFO = ModelInfoPayload(
    name="m", version="v7", engine="fake", context_length=512, vocab_size=1000, has_chat_template=False
)


def wasm(name: str, replace: dict[str, str] | None = None) -> bytes:
    text = (WAT / f"{name}.wat").read_text()
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return bytes(wasmtime.wat2wasm(text))


class FakeServices:
    """A fake at the HostServices seam: these tests are about the sandbox, not the engine (the
    real engine behind the same seam is covered by the invoke integration tests).

    Generations echo "<tenant>:<prompt>" and stream it in two chunks; tokens are code points.
    With `gate` set, generate waits for it after announcing itself on `started`.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.started: asyncio.Queue[str] = asyncio.Queue()

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        self.calls.append((tenant, "generate"))
        if params.model == "forbidden":
            raise HostError(ErrorCode.MODEL_NOT_ALLOWED, "model 'forbidden' is not allowed")
        self.started.put_nowait(tenant)
        if self.gate is not None:
            await self.gate.wait()
        text = f"{tenant}:{params.prompt}"
        if on_text is not None:
            on_text(text[:3])
            on_text(text[3:])
        return GenerationPayload(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=2)

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        self.calls.append((tenant, "encode"))
        return [ord(c) for c in text]

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        self.calls.append((tenant, "decode"))
        return "".join(chr(t) for t in tokens)

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        self.calls.append((tenant, "model_info"))
        if model != "m":
            raise HostError(ErrorCode.MODEL_NOT_FOUND, f"no model {model!r}")
        return INFO


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("wasm-cache"), max_workers=32)
    yield sb
    sb.close()


def make_ctx(
    tenant: str, services: FakeServices, input_data: str = ""
) -> tuple[InvocationContext, list[str]]:
    streamed: list[str] = []
    ctx = InvocationContext(
        tenant=tenant,
        input_data=input_data,
        services=services,
        loop=asyncio.get_running_loop(),
        on_output=streamed.append,
    )
    return ctx, streamed


async def run(
    sandbox: Sandbox,
    name: str,
    input_data: str = "",
    limits: SandboxLimits | None = None,
    services: FakeServices | None = None,
    tenant: str = "acme",
) -> InvocationResult:
    module = sandbox.load(tenant, wasm(name))
    ctx, _ = make_ctx(tenant, services or FakeServices(), input_data)
    return await sandbox.invoke(module, ctx, limits or SandboxLimits())


async def failure(
    sandbox: Sandbox, name: str, limits: SandboxLimits | None = None, input_data: str = ""
) -> InvocationFailed:
    with pytest.raises(InvocationFailed) as info:
        await run(sandbox, name, input_data, limits)
    return info.value


# ---- loading ----------------------------------------------------------------------------------


def test_load_reports_kind_hash_and_abi(sandbox: Sandbox) -> None:
    module = sandbox.load("acme", wasm("echo"))
    assert (module.tenant, module.kind, module.abi_version) == ("acme", "core", (1, 0))
    assert len(module.sha256) == 64


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"hello, not wasm", InvocationErrorCode.INVALID_MODULE),
        (b"", InvocationErrorCode.INVALID_MODULE),
        (b"\0asm\x02\0\0\0", InvocationErrorCode.INVALID_MODULE),  # unknown version
        (b"\0asm\x01\0\0\0\xff\xff", InvocationErrorCode.INVALID_MODULE),  # right header, bad body
        (b"\0asm\x0d\0\x01\0\xff", InvocationErrorCode.INVALID_MODULE),  # component header, bad body
    ],
)
def test_not_webassembly_is_rejected(sandbox: Sandbox, data: bytes, code: InvocationErrorCode) -> None:
    with pytest.raises(InvocationFailed) as info:
        sandbox.load("acme", data)
    assert info.value.code == code
    assert invocation_status(info.value.code) == 422


def test_unknown_imports_are_rejected_with_their_names(sandbox: Sandbox) -> None:
    with pytest.raises(InvocationFailed) as info:
        sandbox.load("acme", wasm("unknown_import"))
    assert info.value.code == InvocationErrorCode.UNKNOWN_IMPORT
    assert "realm.realm_future_thing" in info.value.message
    assert "env.abort" in info.value.message
    assert "realm.realm_emit (wrong type" in info.value.message


@pytest.mark.parametrize("version", ["0x20000", hex(0x10000 | (ABI_MINOR + 1)), "0x00000"])
def test_unsupported_abi_versions_are_rejected(sandbox: Sandbox, version: str) -> None:
    with pytest.raises(InvocationFailed) as info:
        sandbox.load("acme", wasm("abi_v2", {"0x20000": version}))
    assert info.value.code == InvocationErrorCode.ABI_UNSUPPORTED
    assert invocation_status(info.value.code) == 422


def test_missing_exports_are_named(sandbox: Sandbox) -> None:
    with pytest.raises(InvocationFailed) as info:
        sandbox.load("acme", wasm("missing_exports"))
    assert info.value.code == InvocationErrorCode.MISSING_EXPORT
    assert "memory" in info.value.message and "realm_run" in info.value.message


def test_compiled_modules_are_cached_on_disk(tmp_path: Path) -> None:
    echo = wasm("echo")
    first = Sandbox(tmp_path)
    try:
        first.load("a", echo)
        first.load("b", echo)  # same bytes, another tenant: still one compile
        assert first.compiles == 1
    finally:
        first.close()
    second = Sandbox(tmp_path)
    try:
        module = second.load("a", echo)
        assert second.compiles == 0
        assert module.abi_version == (1, 0)
    finally:
        second.close()


def corrupt_artifact(cache_dir: Path) -> None:
    (artifact,) = cache_dir.glob("*.cwasm")
    artifact.write_bytes(artifact.read_bytes()[:100] + b"garbage")


async def test_a_corrupt_cache_file_is_recompiled(tmp_path: Path) -> None:
    echo = wasm("echo")
    first = Sandbox(tmp_path)
    first.load("a", echo)
    first.close()
    corrupt_artifact(tmp_path)
    second = Sandbox(tmp_path)
    try:
        module = second.load("a", echo)
        assert second.compiles == 1
        ctx, _ = make_ctx("a", FakeServices(), "still works")
        assert (await second.invoke(module, ctx, SandboxLimits())).output == "still works"
    finally:
        second.close()


# ---- host functions ---------------------------------------------------------------------------


async def test_echo(sandbox: Sandbox) -> None:
    result = await run(sandbox, "echo", '{"hello": "wörld"}')
    assert result.output == '{"hello": "wörld"}'
    assert result.host_calls == {"input": 1, "emit": 1}
    assert result.memory_peak_bytes == 65536
    assert result.fuel_used is not None and result.fuel_used > 0


async def test_generate_goes_through_the_services(sandbox: Sandbox) -> None:
    services = FakeServices()
    params = GenerateParams(model="m", prompt="hi", max_tokens=5)
    result = await run(sandbox, "generate", params.model_dump_json(), services=services)
    assert GenerationPayload.model_validate_json(result.output).text == "acme:hi"
    assert services.calls == [("acme", "generate")]
    assert result.host_calls["generate"] == 1


async def test_a_host_error_reaches_the_guest_with_its_message(sandbox: Sandbox) -> None:
    params = GenerateParams(model="forbidden", prompt="hi")
    with pytest.raises(InvocationFailed) as info:
        await run(sandbox, "generate", params.model_dump_json())
    # the guest returned the code it got (3 = model-not-allowed) after emitting the message
    assert info.value.code == InvocationErrorCode.TENANT_ERROR
    assert info.value.message == "model 'forbidden' is not allowed"


async def test_tokens_and_model_info(sandbox: Sandbox) -> None:
    services = FakeServices()
    module = sandbox.load("acme", wasm("tokens"))
    ctx, streamed = make_ctx("acme", services, "héllo ✓")
    result = await sandbox.invoke(module, ctx, SandboxLimits())
    assert streamed[:2] == ["héllo ✓", "v7"]
    assert ModelInfoPayload.model_validate_json(streamed[2]) == INFO
    assert result.host_calls["encode_tokens"] == result.host_calls["decode_tokens"] == 1


async def test_every_pointer_and_length_is_checked(sandbox: Sandbox) -> None:
    services = FakeServices()
    result = await run(sandbox, "abuse", "some input", services=services)
    record, echoed = result.output[: -len("some input")], result.output[-len("some input") :]
    oob, too_large, misuse = record.split("|")
    assert oob == "2" * 22  # out-of-bounds from all ten functions, pointer and length
    assert too_large == "777"
    assert misuse == "811:;"  # invalid-utf8, invalid-argument x2, no-result, buffer-too-small
    assert echoed == "some input"  # a too-small buffer left the result pending
    assert services.calls == []  # nothing invalid reached the services


async def test_tenant_error(sandbox: Sandbox) -> None:
    failed = await failure(sandbox, "tenant_error")
    assert (failed.code, failed.message, invocation_status(failed.code)) == (
        InvocationErrorCode.TENANT_ERROR,
        "bad input",
        422,
    )


async def test_wasi_guest_exit_is_a_tenant_error(sandbox: Sandbox) -> None:
    # WASI imports are allowed (Go needs them); stdout goes nowhere, the exit status is reported
    failed = await failure(sandbox, "wasi_exit")
    assert failed.code == InvocationErrorCode.TENANT_ERROR
    assert failed.message == "the module exited with status 3"


# ---- hostile guests ---------------------------------------------------------------------------


async def test_infinite_loop_hits_the_deadline(sandbox: Sandbox) -> None:
    failed = await failure(sandbox, "loop", SandboxLimits(deadline_ms=50))
    assert failed.code == InvocationErrorCode.TIMEOUT
    assert invocation_status(failed.code) == 504


async def test_infinite_loop_runs_out_of_fuel(sandbox: Sandbox) -> None:
    failed = await failure(sandbox, "loop", SandboxLimits(fuel=100_000))
    assert failed.code == InvocationErrorCode.FUEL_EXHAUSTED


async def test_memory_growth_stops_at_the_cap(sandbox: Sandbox) -> None:
    # memory.grow past the cap is no error: it returns -1 and the guest decides
    coping = await run(sandbox, "memory_bomb", "", SandboxLimits(memory_mib=8))
    assert coping.memory_peak_bytes <= 8 << 20
    assert coping.memory_peak_bytes > 7 << 20
    failed = await failure(sandbox, "memory_bomb", SandboxLimits(memory_mib=8), input_data="trap")
    assert failed.code == InvocationErrorCode.TRAP
    assert "unreachable" in failed.message


async def test_initial_memory_over_the_cap(sandbox: Sandbox) -> None:
    failed = await failure(sandbox, "big_memory", SandboxLimits(memory_mib=64))
    assert failed.code == InvocationErrorCode.MEMORY_LIMIT
    assert (await run(sandbox, "big_memory", limits=SandboxLimits(memory_mib=256))).output == ""


async def test_table_growth_stops_at_the_cap(sandbox: Sandbox) -> None:
    failed = await failure(sandbox, "table_bomb", SandboxLimits(table_elements=10_000))
    assert failed.code == InvocationErrorCode.TRAP  # table.grow returned -1, then unreachable
    assert "unreachable" in failed.message


async def test_initial_table_over_the_cap(sandbox: Sandbox) -> None:
    with pytest.raises(InvocationFailed) as at_load:  # over the default cap: rejected at deploy
        sandbox.load("acme", wasm("big_table"))
    assert at_load.value.code == InvocationErrorCode.RESOURCE_LIMIT
    module = sandbox.load("acme", wasm("big_table", {"1000000": "5000"}))
    ctx, _ = make_ctx("acme", FakeServices())
    with pytest.raises(InvocationFailed) as at_run:  # over this invocation's cap
        await sandbox.invoke(module, ctx, SandboxLimits(table_elements=1000))
    assert at_run.value.code == InvocationErrorCode.RESOURCE_LIMIT
    assert "table minimum size of 5000 elements" in at_run.value.message


async def test_stack_overflow_is_a_trap(sandbox: Sandbox) -> None:
    failed = await failure(sandbox, "recursion")
    assert failed.code == InvocationErrorCode.TRAP
    assert "call stack exhausted" in failed.message


async def test_trap_mid_stream_keeps_what_was_emitted(sandbox: Sandbox) -> None:
    module = sandbox.load("acme", wasm("stream_trap"))
    ctx, streamed = make_ctx("acme", FakeServices(), GenerateParams(model="m", prompt="hi").model_dump_json())
    with pytest.raises(InvocationFailed) as info:
        await sandbox.invoke(module, ctx, SandboxLimits())
    assert info.value.code == InvocationErrorCode.TRAP
    assert streamed == ["acm", "e:hi"] == ctx.output
    assert ctx.host_calls["generate_stream"] == 1


# ---- many tenants -----------------------------------------------------------------------------


async def test_instances_are_isolated(sandbox: Sandbox) -> None:
    services = FakeServices()
    services.gate = asyncio.Event()
    module = sandbox.load("acme", wasm("isolation"))
    n = 12
    contexts = [make_ctx(f"t{i}", services, f"value-{i}" * (i + 1))[0] for i in range(n)]
    tasks = [asyncio.create_task(sandbox.invoke(module, ctx, SandboxLimits())) for ctx in contexts]
    for _ in range(n):  # every instance has written its value and is waiting in a host call
        await asyncio.wait_for(services.started.get(), 30)
    services.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r.output for r in results] == [f"value-{i}" * (i + 1) for i in range(n)]


async def test_one_tenants_failure_does_not_stop_another(sandbox: Sandbox) -> None:
    looping = asyncio.create_task(run(sandbox, "loop", limits=SandboxLimits(deadline_ms=300), tenant="bad"))
    trapping = asyncio.create_task(run(sandbox, "recursion", tenant="bad"))
    good = await run(sandbox, "echo", "fine", tenant="good")
    outcomes = await asyncio.gather(looping, trapping, return_exceptions=True)
    assert good.output == "fine"
    assert [o.code for o in outcomes if isinstance(o, InvocationFailed)] == [
        InvocationErrorCode.TIMEOUT,
        InvocationErrorCode.TRAP,
    ]


async def test_hot_swap_keeps_in_flight_invocations_on_their_module(sandbox: Sandbox) -> None:
    services = FakeServices()
    services.gate = asyncio.Event()
    v1 = sandbox.deploy("swap", wasm("generate"))
    current = sandbox.current("swap")
    assert current is not None
    ctx1, _ = make_ctx("swap", services, GenerateParams(model="m", prompt="old").model_dump_json())
    in_flight = asyncio.create_task(sandbox.invoke(current, ctx1, SandboxLimits()))
    await asyncio.wait_for(services.started.get(), 30)  # v1 is blocked inside realm_host_generate

    v2 = sandbox.deploy("swap", wasm("echo"))
    assert sandbox.current("swap") == v2 != v1
    module: TenantModule | None = sandbox.current("swap")
    assert module is not None
    ctx2, _ = make_ctx("swap", services, "new")
    assert (await sandbox.invoke(module, ctx2, SandboxLimits())).output == "new"

    services.gate.set()
    assert GenerationPayload.model_validate_json((await in_flight).output).text == "swap:old"
    sandbox.remove("swap")
    assert sandbox.current("swap") is None

"""An invocation's deadline bounds what it causes in host code, not only its WebAssembly: WASI
sleeps, waits on host calls, a slow consumer of its output, deploy-time initialisation; and
`Sandbox.close()` ends runs in flight. Guests are WAT files in tests/wat/ (real wasmtime, the
real `realm` and WASI bindings); the HostServices behind them is a fake at that seam."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import wasmtime
from repo_paths import WAT

from realm.runtime.sandbox import InvocationFailed, InvocationResult, Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import (
    GenerateParams,
    GenerationPayload,
    InvocationErrorCode,
    ModelInfoPayload,
)
from realm.runtime.sandbox.context import InvocationContext, OutputSink

# Generous bounds: what they tell apart is "ended at its deadline" from "slept for an hour".
SLEEP_S = 3600
BOUND_S = 60


def wasm(name: str, replace: dict[str, str] | None = None) -> bytes:
    text = (WAT / f"{name}.wat").read_text()
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return bytes(wasmtime.wat2wasm(text))


class SilentServices:
    """A fake at the HostServices seam whose generate never answers (an engine that hangs)."""

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        return []

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        return ""

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        raise AssertionError("not called")


def make_ctx(input_data: str = "", on_output: OutputSink | None = None) -> InvocationContext:
    return InvocationContext(
        tenant="acme",
        input_data=input_data,
        services=SilentServices(),  # type: ignore[arg-type]  # conversations are not called
        loop=asyncio.get_running_loop(),
        on_output=on_output or (lambda _: None),
    )


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path / "cache", max_workers=1)
    yield sb
    sb.close()


async def invoke(
    sandbox: Sandbox, name: str, limits: SandboxLimits, ctx: InvocationContext | None = None
) -> InvocationResult:
    module = sandbox.load("acme", wasm(name))
    return await asyncio.wait_for(sandbox.invoke(module, ctx or make_ctx(), limits), BOUND_S)


async def test_a_short_wasi_sleep_is_had_and_reported(sandbox: Sandbox) -> None:
    module = sandbox.load("acme", wasm("wasi_sleep", {"3600000000000": "1000000"}))  # 1 ms
    result = await sandbox.invoke(module, make_ctx(), SandboxLimits(deadline_ms=10_000))
    assert result.output == "z"  # realm_run returned 0: one clock event, for its subscription


async def test_a_wasi_sleep_past_the_deadline_ends_at_the_deadline(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(InvocationFailed) as info:
        await invoke(sandbox, "wasi_sleep", SandboxLimits(deadline_ms=1000))
    assert info.value.code == InvocationErrorCode.TIMEOUT
    assert time.monotonic() - started < BOUND_S < SLEEP_S


async def test_the_worker_thread_is_free_after_a_sleep_is_cut_short(sandbox: Sandbox) -> None:
    # max_workers=1: the echo below runs only if the sleeper gave its thread back.
    with pytest.raises(InvocationFailed):
        await invoke(sandbox, "wasi_sleep", SandboxLimits(deadline_ms=500))
    result = await invoke(sandbox, "echo", SandboxLimits(), make_ctx("after the sleeper"))
    assert result.output == "after the sleeper"


async def test_a_host_call_that_never_answers_ends_at_the_deadline(sandbox: Sandbox) -> None:
    ctx = make_ctx(GenerateParams(model="m", prompt="hi").model_dump_json())
    with pytest.raises(InvocationFailed) as info:
        await invoke(sandbox, "generate", SandboxLimits(deadline_ms=1000), ctx)
    # generate.wat returns the host call's error code: the deadline, not the guest, is the reason
    assert info.value.code == InvocationErrorCode.TIMEOUT


async def test_a_consumer_that_never_takes_the_output_ends_the_run_at_the_deadline(
    sandbox: Sandbox,
) -> None:
    never: concurrent.futures.Future[None] = concurrent.futures.Future()
    ctx = make_ctx("hello", on_output=lambda _: never)
    with pytest.raises(InvocationFailed) as info:
        await invoke(sandbox, "echo", SandboxLimits(deadline_ms=1000), ctx)
    assert info.value.code == InvocationErrorCode.TIMEOUT


async def test_deploying_a_module_that_sleeps_in_its_start_function_is_bounded(sandbox: Sandbox) -> None:
    with pytest.raises(InvocationFailed) as info:
        await asyncio.wait_for(asyncio.to_thread(sandbox.load, "acme", wasm("start_sleep")), BOUND_S)
    assert info.value.code == InvocationErrorCode.TIMEOUT
    assert "load check" in info.value.message


async def test_close_ends_sleeping_invocations_within_its_grace(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "cache", max_workers=4)
    module = sandbox.load("acme", wasm("wasi_sleep"))
    asleep = [threading.Event() for _ in range(3)]
    tasks = [
        asyncio.create_task(
            sandbox.invoke(
                module, make_ctx(on_output=lambda _, e=e: e.set()), SandboxLimits(deadline_ms=SLEEP_S * 1000)
            )
        )
        for e in asleep
    ]
    for e in asleep:  # each has emitted "z" and gone to sleep
        assert await asyncio.to_thread(e.wait, BOUND_S)
    await asyncio.wait_for(asyncio.to_thread(sandbox.close, 5.0), BOUND_S)
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND_S)
    assert [o.code for o in outcomes if isinstance(o, InvocationFailed)] == [InvocationErrorCode.TIMEOUT] * 3


def go_example(name: str) -> bytes:
    from go_builds import GoUnavailable, build_go_example

    try:
        return build_go_example(name).read_bytes()
    except GoUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"Go toolchain unavailable: {e}")


async def test_go_time_sleep_ends_at_the_deadline_and_frees_its_thread(sandbox: Sandbox) -> None:
    # sdk/go/examples/sleep: time.Sleep(time.Hour), which Go's runtime waits out in poll_oneoff.
    sleeper = sandbox.load("acme", go_example("sleep"))
    streamed: list[str] = []
    ctx = make_ctx(on_output=streamed.append)
    with pytest.raises(InvocationFailed) as info:
        await asyncio.wait_for(sandbox.invoke(sleeper, ctx, SandboxLimits(deadline_ms=1000)), BOUND_S)
    assert info.value.code == InvocationErrorCode.TIMEOUT
    assert streamed == ["asleep"]  # it was asleep, not failing to start
    echo = sandbox.load("acme", go_example("echo"))  # max_workers=1: the sleeper's thread is back
    result = await asyncio.wait_for(sandbox.invoke(echo, make_ctx("awake"), SandboxLimits()), BOUND_S)
    assert result.output == "awake"

"""A component asleep in WASI 0.2 (wasmtime's native poll: nothing the host can interrupt) past its
deadline: its caller is answered with `wasm_timeout` and told the thread is still held
(`InvocationAbandoned.thread_done`); the sandbox keeps threads for runs it admits beside such
sleepers, and refuses new component runs once `max_abandoned` of them sleep. Real wasmtime, a real
componentize-py guest (tests/sandbox_builds.py's napper); the guest makes no service calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import wasmtime
from repo_paths import WAT
from sandbox_builds import artifact_cache, build_napper

from realm.runtime.sandbox import InvocationAbandoned, InvocationFailed, Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import InvocationErrorCode
from realm.runtime.sandbox.context import InvocationContext

NAP_S = 8  # past the 0.5 s deadline and its answer, short enough to wait out
BOUND_S = 60


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(artifact_cache(), max_workers=1, max_abandoned=1)
    yield sb
    sb.close()


def make_ctx(input_data: str = "") -> InvocationContext:
    return InvocationContext(
        tenant="acme",
        input_data=input_data,
        services=None,  # type: ignore[arg-type]  # these guests make no service calls
        loop=asyncio.get_running_loop(),
        on_output=lambda _: None,
    )


async def test_a_component_asleep_past_its_deadline_is_answered_and_its_thread_accounted(
    sandbox: Sandbox,
) -> None:
    napper = await asyncio.to_thread(sandbox.load, "acme", build_napper().read_bytes())
    with pytest.raises(InvocationAbandoned) as info:
        await sandbox.invoke(napper, make_ctx(str(NAP_S)), SandboxLimits(deadline_ms=500))
    assert info.value.code == InvocationErrorCode.TIMEOUT
    assert not info.value.thread_done.done()
    assert sandbox.abandoned == 1

    # At max_abandoned, another component run is refused at once instead of pinning a thread.
    with pytest.raises(InvocationFailed) as refused:
        await sandbox.invoke(napper, make_ctx("0"), SandboxLimits(deadline_ms=500))
    assert refused.value.code == InvocationErrorCode.BUSY

    # A run the caller admits (max_workers=1, the sleeper's answered) finds a thread now, not after
    # the nap.
    echo = sandbox.load("acme", bytes(wasmtime.wat2wasm((WAT / "echo.wat").read_text())))
    result = await asyncio.wait_for(sandbox.invoke(echo, make_ctx("awake"), SandboxLimits()), NAP_S / 2)
    assert result.output == "awake"

    # Woken, the run ends as what it is by then: past its deadline.
    with pytest.raises(InvocationFailed) as woke:
        await asyncio.wait_for(info.value.thread_done, BOUND_S)
    assert woke.value.code == InvocationErrorCode.TIMEOUT
    await asyncio.sleep(0)  # the wake-up callback runs after the future's own waiters
    assert sandbox.abandoned == 0

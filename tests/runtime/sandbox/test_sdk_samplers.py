"""The SDKs' samplers (Go's SetSampler, Python's Sampler) as the real sampler instance runs them:
the Go and Python examples built from sdk/, stepped through runtime/sandbox/sampler.py with
real wasmtime, the step input and decisions of the core protocol (Go) and of the WIT `sampler`
export (Python). The services behind the few host calls a step may make are a fake at the
HostServices seam (test_sandbox_core.FakeServices). The engine side is the invoke tests'."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from go_builds import GoUnavailable, build_go_example
from sandbox_builds import artifact_cache, build_example
from test_sandbox_core import FakeServices

from realm.runtime.sandbox import Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import (
    BiasDecision,
    CandidatePayload,
    DecisionPayload,
    SamplerStepInput,
    SequenceStepPayload,
    StopDecision,
    TokenBias,
    TokenDecision,
)
from realm.runtime.sandbox.sampler import SamplerContext, SamplerFailed, SamplerInstance


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(artifact_cache(), max_workers=2)
    yield sb
    sb.close()


def go(name: str) -> Path:
    try:
        return build_go_example(name)
    except GoUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"Go toolchain unavailable: {e}")


def seq(config: str, *texts: str, sid: int = 1, tokens: tuple[int, ...] = ()) -> SequenceStepPayload:
    """One sequence's step; candidate i (best first) is token 100 + i with text texts[i]."""
    return SequenceStepPayload(
        id=sid,
        config=config,
        step=len(tokens),
        candidates=[
            CandidatePayload(token=100 + i, logprob=-0.5 * (i + 1), text=t) for i, t in enumerate(texts)
        ],
        tokens=list(tokens),
    )


async def sampler(sandbox: Sandbox, wasm: Path, limits: SandboxLimits | None = None) -> SamplerInstance:
    ctx = SamplerContext(tenant="acme", services=FakeServices(), loop=asyncio.get_running_loop())
    module = sandbox.load("acme", await asyncio.to_thread(wasm.read_bytes))
    return SamplerInstance(sandbox, module, limits or SandboxLimits(), ctx)


async def step(inst: SamplerInstance, *steps: SequenceStepPayload) -> list[DecisionPayload]:
    return await asyncio.to_thread(inst.step, SamplerStepInput(steps=list(steps)))


def top_candidate_steps() -> list[SequenceStepPayload]:
    # Texts that JSON escapes, and a long history: the SDK's hand-written reader must get them right.
    return [
        seq("", ' "quoted"\n', "b", sid=1, tokens=tuple(range(300))),
        seq("", "é😀", sid=2**63 + 5),
        seq("x" * 100, "\\", "c", sid=3, tokens=(1,)),
    ]


@pytest.mark.parametrize("language", ["go", "python"])
async def test_top_sampler_takes_candidates_0_of_every_sequence(sandbox: Sandbox, language: str) -> None:
    wasm = go("top_sampler") if language == "go" else build_example("top_sampler")
    inst = await sampler(sandbox, wasm)
    try:
        for _ in range(3):  # the same instance, step after step (the Go SDK reuses its buffers)
            assert await step(inst, *top_candidate_steps()) == [TokenDecision(kind="token", token=100)] * 3
    finally:
        inst.close()


@pytest.mark.parametrize("language", ["go", "python"])
async def test_lipogram_takes_the_best_candidate_without_an_e(sandbox: Sandbox, language: str) -> None:
    wasm = go("lipogram") if language == "go" else build_example("lipogram")
    inst = await sampler(sandbox, wasm)
    try:
        assert await step(
            inst,
            seq("eE", " The", " A"),
            seq("eE", " hErE", " there", " cat", " dog", sid=2),
            seq("eE", " here", " there", sid=3),
        ) == [
            TokenDecision(kind="token", token=101),
            TokenDecision(kind="token", token=102),
            StopDecision(kind="stop"),
        ]
    finally:
        inst.close()


@pytest.mark.parametrize("language", ["go", "python"])
async def test_json_rule_keeps_out_its_digit_and_bans_a_step_that_is_all_sevens(
    sandbox: Sandbox, language: str
) -> None:
    wasm = go("json_rule") if language == "go" else build_example("json_rule")
    inst = await sampler(sandbox, wasm)
    try:
        decisions = await step(inst, seq("7", "17", "2"), seq("7", "7", "77", sid=2))
        assert decisions[0] == TokenDecision(kind="token", token=101)
        assert isinstance(decisions[1], BiasDecision)
        assert [b.token for b in decisions[1].bias] == [100, 101]
        assert all(b.bias <= -1e30 for b in decisions[1].bias)  # banned
    finally:
        inst.close()


async def test_go_spin_sampler_overruns_its_step_budget(sandbox: Sandbox) -> None:
    inst = await sampler(sandbox, go("spin_sampler"), SandboxLimits(sampler_step_ms=50))
    try:
        start = time.monotonic()
        with pytest.raises(SamplerFailed) as info:
            await step(inst, seq("", "a"))
        assert info.value.code == "sampler_timeout"
        assert time.monotonic() - start < 5  # interrupted at its budget, not left to spin
    finally:
        inst.close()


async def test_a_go_module_without_a_sampler_fails_the_step(sandbox: Sandbox) -> None:
    # Every Go module exports realm_sampler_step; without SetSampler it answers nothing.
    inst = await sampler(sandbox, go("echo"))
    try:
        with pytest.raises(SamplerFailed) as info:
            await step(inst, seq("", "a"))
        assert info.value.code == "sampler_trap"
    finally:
        inst.close()


def test_ban_is_a_bias_the_host_accepts() -> None:
    # The SDKs' BanBias / rt.BAN: finite (JSON and pydantic refuse infinities) and at most -1e30.
    assert TokenBias(token=1, bias=-1e38).bias <= -1e30

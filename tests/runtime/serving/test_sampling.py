"""A tenant's sampler as the engine sees it (runtime/serving/sampling.py): the StepController over
the module's sampler instance, driven here the way the engine drives it (views in, one `done`
out) on the real sandbox with inline WAT guests. The engine's own use of the seam is covered by
tests/runtime/serving/test_sampling_abi.py."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from test_sampler_instance import TOP, answering
from test_sandbox_core import FakeServices

from realm.runtime.engines.base import Candidate, StepDecision, StepFailure, StepView
from realm.runtime.metrics import Metrics
from realm.runtime.sandbox import Sandbox, SandboxLimits, TenantModule
from realm.runtime.sandbox.sampler import SamplerContext
from realm.runtime.serving import sampling
from realm.runtime.serving.sampling import Samplers, TenantSampler


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("wasm-cache"), max_workers=2)
    yield sb
    sb.close()


def module(sandbox: Sandbox, wat: str, tenant: str = "acme") -> TenantModule:
    return sandbox.load(tenant, bytes(wasmtime.wat2wasm(wat)))


def view(request_id: str, top: int, step: int = 0) -> StepView:
    return StepView(
        request_id=request_id,
        step=step,
        candidates=(Candidate(top, -0.5, "x"), Candidate(top + 1, float("-inf"), "y")),
        tokens=(),
    )


async def controller(
    samplers: Samplers,
    sandbox: Sandbox,
    mod: TenantModule,
    metrics: Metrics,
    limits: SandboxLimits | None = None,
) -> TenantSampler:
    loop = asyncio.get_running_loop()
    return samplers.controller(
        sandbox=sandbox,
        module=mod,
        limits=limits or SandboxLimits(),
        context=lambda: SamplerContext(tenant=mod.tenant, services=FakeServices(), loop=loop),
        model="m",
        top_k=2,
        metrics=metrics,
    )


async def decide(ctl: TenantSampler, views: Sequence[StepView]) -> Sequence[StepDecision] | StepFailure:
    got: list[Sequence[StepDecision] | StepFailure] = []
    done = threading.Event()

    def answer(outcome: Sequence[StepDecision] | StepFailure) -> None:
        got.append(outcome)
        done.set()

    ctl.submit(views, answer)
    assert await asyncio.to_thread(done.wait, 30)
    return got[0]


async def test_one_submit_answers_every_view_in_order(sandbox: Sandbox) -> None:
    samplers, metrics = Samplers(), Metrics()
    ctl = await controller(samplers, sandbox, module(sandbox, TOP), metrics)
    ctl.register("r1", samplers.next_id("acme"), "")
    ctl.register("r2", samplers.next_id("acme"), "")
    assert await decide(ctl, [view("r1", 10), view("r2", 20)]) == [
        StepDecision("token", (10,)),
        StepDecision("token", (20,)),
    ]
    assert metrics.registry.get_sample_value("realm_sampler_step_seconds_count", {"model": "m"}) == 1


async def test_an_overrun_fails_the_submit_and_is_counted(sandbox: Sandbox) -> None:
    samplers, metrics = Samplers(), Metrics()
    ctl = await controller(
        samplers, sandbox, module(sandbox, answering("{}", steps="(loop $l (br $l))")), metrics
    )
    ctl.register("r1", samplers.next_id("acme"), "")
    outcome = await decide(ctl, [view("r1", 10)])
    assert isinstance(outcome, StepFailure) and outcome.code == "sampler_timeout"
    labels = {"tenant": "acme", "code": "sampler_timeout"}
    assert metrics.registry.get_sample_value("realm_sampler_failures_total", labels) == 1


async def test_a_released_sequence_is_stopped_without_asking_the_guest(sandbox: Sandbox) -> None:
    samplers = Samplers()
    ctl = await controller(samplers, sandbox, module(sandbox, TOP), Metrics())
    ctl.register("r1", samplers.next_id("acme"), "")
    ctl.register("r2", samplers.next_id("acme"), "")
    ctl.release("r1")
    assert await decide(ctl, [view("r1", 10), view("r2", 20)]) == [
        StepDecision("stop"),
        StepDecision("token", (20,)),
    ]


def test_generation_ids_are_per_tenant_and_never_reused() -> None:
    samplers = Samplers()
    assert [samplers.next_id("a"), samplers.next_id("a"), samplers.next_id("b"), samplers.next_id("a")] == [
        1,
        2,
        1,
        3,
    ]


async def test_a_redeployed_modules_idle_instance_is_closed(sandbox: Sandbox) -> None:
    samplers, metrics = Samplers(), Metrics()
    old = await controller(samplers, sandbox, module(sandbox, TOP), metrics)
    old.register("r1", samplers.next_id("acme"), "")
    old.release("r1")  # idle now
    new_module = module(sandbox, answering('{"decisions":[{"kind":"stop"}]}'))
    await controller(samplers, sandbox, new_module, metrics)
    assert samplers.instances == 1
    old.register("r2", samplers.next_id("acme"), "")  # whoever still held the old one is refused
    assert await decide(old, [view("r2", 1)]) == StepFailure("sampler_trap", "the sampler instance is closed")


async def test_an_instance_with_generations_is_kept(sandbox: Sandbox) -> None:
    samplers, metrics = Samplers(), Metrics()
    await controller(samplers, sandbox, module(sandbox, TOP), metrics)  # one generation, not released
    await controller(
        samplers, sandbox, module(sandbox, answering('{"decisions":[{"kind":"stop"}]}')), metrics
    )
    assert samplers.instances == 2


async def test_one_timer_closes_the_idle_instances(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "IDLE_S", 0.2)
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}  # other tests' registries
    samplers, metrics = Samplers(), Metrics()
    ctl = await controller(samplers, sandbox, module(sandbox, TOP), metrics)
    for i in range(50):  # fifty generations ending: one timer, not fifty threads
        ctl.register(f"r{i}", samplers.next_id("acme"), "")
        ctl.release(f"r{i}")
        await controller(samplers, sandbox, module(sandbox, TOP), metrics)
    ctl.register("last", samplers.next_id("acme"), "")
    ctl.release("last")
    timers = {t for t in threading.enumerate() if isinstance(t, threading.Timer)} - before
    assert len(timers) == 1
    await asyncio.sleep(1.0)  # generous: the timer fires 0.3 s after the last release
    assert samplers.instances == 0

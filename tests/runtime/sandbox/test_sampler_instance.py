"""A tenant module's own sampler (ABI 1.2) on the real sandbox: the step protocol of a core module
(input as the pending result, answer by realm_sampler_decide), its budgets and what ends a step.
Guests are WAT inline; the services behind the few host calls a step may make are a fake at the
HostServices seam (tests/runtime/sandbox/test_sandbox_core.FakeServices)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator

import pytest
import wasmtime
from test_sandbox_core import FakeServices

from realm.runtime.sandbox import Sandbox, SandboxLimits, TenantModule
from realm.runtime.sandbox.abi import (
    CandidatePayload,
    DecisionPayload,
    SamplerStepInput,
    SequenceStepPayload,
    TokenDecision,
)
from realm.runtime.sandbox.sampler import SamplerContext, SamplerFailed, SamplerInstance

HEADER = """
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_sampler_decide" (func $decide (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10002))
  (func (export "realm_run") (result i32) (i32.const 0))
"""

# Picks candidates[0] of every step: scans the input for `[{"token":` and answers
# {"decisions":[{"kind":"token","token":<its digits>},...]}. The input is read at 16384, the
# answer built at 32768.
TOP = (
    "(module"
    + HEADER
    + r"""
  (data (i32.const 0) "[{\"token\":")
  (data (i32.const 16) "{\"decisions\":[")
  (data (i32.const 32) "{\"kind\":\"token\",\"token\":")
  (func $match (param $at i32) (result i32) (local $i i32)
    (block $no (loop $next
      (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $i)))
                         (i32.load8_u (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 10)))))
    (i32.eq (local.get $i) (i32.const 10)))
  (func $copy (param $dst i32) (param $src i32) (param $n i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $n))
    (i32.add (local.get $dst) (local.get $n)))
  (func (export "realm_sampler_step") (param $n i32) (result i32) (local $p i32) (local $out i32)
    (drop (call $read (i32.const 16384) (local.get $n)))
    (local.set $out (call $copy (i32.const 32768) (i32.const 16) (i32.const 14)))
    (local.set $p (i32.const 16384))
    (block $done (loop $scan
      (br_if $done (i32.ge_u (local.get $p) (i32.add (i32.const 16384) (local.get $n))))
      (if (call $match (local.get $p)) (then
        (local.set $out (call $copy (local.get $out) (i32.const 32) (i32.const 24)))
        (local.set $p (i32.add (local.get $p) (i32.const 10)))
        (block $end (loop $digit
          (br_if $end (i32.gt_u (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)) (i32.const 9)))
          (i32.store8 (local.get $out) (i32.load8_u (local.get $p)))
          (local.set $out (i32.add (local.get $out) (i32.const 1)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br $digit)))
        (i32.store16 (local.get $out) (i32.const 0x2c7d))
        (local.set $out (i32.add (local.get $out) (i32.const 2)))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $scan)))
    ;; the last "," becomes "]}"
    (i32.store16 (i32.sub (local.get $out) (i32.const 1)) (i32.const 0x7d5d))
    (call $decide (i32.const 32768) (i32.sub (i32.add (local.get $out) (i32.const 1)) (i32.const 32768)))))
"""
)


def answering(body: str, *, steps: str = "") -> str:
    """A core sampler that answers every step with the JSON `body` (and runs `steps` first)."""
    escaped = body.replace('"', '\\"')
    return (
        "(module"
        + HEADER
        + f"""
  (data (i32.const 0) "{escaped}")
  (func (export "realm_sampler_step") (param $n i32) (result i32)
    {steps}
    (drop (call $decide (i32.const 0) (i32.const {len(body)})))
    (i32.const 0)))
"""
    )


def module(sandbox: Sandbox, wat: str) -> TenantModule:
    return sandbox.load("acme", bytes(wasmtime.wat2wasm(wat)))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("wasm-cache"), max_workers=2)
    yield sb
    sb.close()


def steps(*tops: int) -> SamplerStepInput:
    return SamplerStepInput(
        steps=[
            SequenceStepPayload(
                id=i + 1,
                config="c",
                step=3,
                candidates=[
                    CandidatePayload(token=top, logprob=-0.1, text="a"),
                    CandidatePayload(token=top + 1, logprob=-2.5, text="b"),
                ],
                tokens=[7, 8, 9],
            )
            for i, top in enumerate(tops)
        ]
    )


async def instance(
    sandbox: Sandbox, wat: str, limits: SandboxLimits | None = None
) -> tuple[SamplerInstance, SamplerContext]:
    ctx = SamplerContext(tenant="acme", services=FakeServices(), loop=asyncio.get_running_loop())
    return SamplerInstance(sandbox, module(sandbox, wat), limits or SandboxLimits(), ctx), ctx


async def step(inst: SamplerInstance, data: SamplerStepInput) -> list[DecisionPayload]:
    return await asyncio.to_thread(inst.step, data)


async def failed(inst: SamplerInstance, data: SamplerStepInput) -> SamplerFailed:
    with pytest.raises(SamplerFailed) as info:
        await step(inst, data)
    return info.value


async def test_a_core_sampler_reads_the_steps_and_decides_for_each(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, TOP)
    assert await step(inst, steps(42, 7, 31999)) == [
        TokenDecision(kind="token", token=42),
        TokenDecision(kind="token", token=7),
        TokenDecision(kind="token", token=31999),
    ]


async def test_the_instance_lives_across_steps(sandbox: Sandbox) -> None:
    # A global counter that the second call sees: one instance, not one per step.
    counter = answering(
        '{"decisions":[{"kind":"stop"}]}',
        steps="(global.set $g (i32.add (global.get $g) (i32.const 1)))"
        "(if (i32.eq (global.get $g) (i32.const 2)) (then unreachable))",
    ).replace("(memory (export", "(global $g (mut i32) (i32.const 0))\n  (memory (export")
    inst, _ = await instance(sandbox, counter)
    await step(inst, steps(1))
    assert (await failed(inst, steps(1))).code == "sampler_trap"


async def test_a_sampler_that_spins_overruns_its_step(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, answering("{}", steps="(loop $l (br $l))"))
    assert (await failed(inst, steps(1))).code == "sampler_timeout"


async def test_a_sampler_out_of_fuel_overruns_its_step(sandbox: Sandbox) -> None:
    limits = SandboxLimits(sampler_step_ms=60_000, sampler_step_fuel=10_000)
    inst, _ = await instance(sandbox, answering("{}", steps="(loop $l (br $l))"), limits)
    failure = await failed(inst, steps(1))
    assert (failure.code, failure.message) == (
        "sampler_timeout",
        "the sampler used its fuel budget for the step",
    )


async def test_a_trapping_sampler_fails_its_step_and_a_fresh_instance_serves_the_next(
    sandbox: Sandbox,
) -> None:
    # Traps on its first call only (a global survives in one instance, not in a fresh one).
    once = answering(
        '{"decisions":[{"kind":"stop"}]}',
        steps="(if (i32.eqz (global.get $g)) (then (global.set $g (i32.const 1)) unreachable))",
    ).replace("(memory (export", "(global $g (mut i32) (i32.const 0))\n  (memory (export")
    inst, _ = await instance(sandbox, once)
    failure = await failed(inst, steps(1))
    assert failure.code == "sampler_trap" and "unreachable" in failure.message
    assert (await failed(inst, steps(1))).code == "sampler_trap"  # the fresh instance's first call


async def test_a_module_without_the_export_fails_with_a_message(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, "(module" + HEADER + ")")
    failure = await failed(inst, steps(1))
    assert (failure.code, failure.message) == ("sampler_trap", "the module exports no sampler")


async def test_a_nonzero_return_is_a_trap(sandbox: Sandbox) -> None:
    inst, _ = await instance(
        sandbox, answering('{"decisions":[{"kind":"stop"}]}').replace("(i32.const 0)))", "(i32.const 3)))")
    )
    assert (await failed(inst, steps(1))).code == "sampler_trap"


async def test_returning_without_deciding_is_invalid(sandbox: Sandbox) -> None:
    inst, _ = await instance(
        sandbox, answering("x").replace("(drop (call $decide (i32.const 0) (i32.const 1)))", "")
    )
    failure = await failed(inst, steps(1))
    assert failure.code == "sampler_invalid" and "without calling realm_sampler_decide" in failure.message


async def test_a_wrong_decision_count_is_invalid(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, answering('{"decisions":[{"kind":"stop"}]}'))
    failure = await failed(inst, steps(1, 2))
    assert (failure.code, failure.message) == ("sampler_invalid", "1 decisions for 2 sequences")


@pytest.mark.parametrize(
    "body",
    [
        '{"decisions":[{"kind":"token","token":-1}]}',
        '{"decisions":[{"kind":"token","token":4294967296}]}',
        '{"decisions":[{"kind":"allow","tokens":[]}]}',
        '{"decisions":[{"kind":"force","tokens":[]}]}',
        '{"decisions":[{"kind":"jump"}]}',
        '{"decisions":[{"kind":"stop","extra":1}]}',
        '{"decisions":[{"kind":"stop"}',
    ],
)
async def test_a_decision_that_does_not_validate_is_invalid(sandbox: Sandbox, body: str) -> None:
    inst, _ = await instance(sandbox, answering(body))
    assert (await failed(inst, steps(1))).code == "sampler_invalid"


async def test_deciding_twice_in_a_step_is_refused(sandbox: Sandbox) -> None:
    # The second realm_sampler_decide must return -invalid_argument (1), else the guest traps.
    body = '{"decisions":[{"kind":"stop"}]}'
    escaped = body.replace('"', '\\"')
    twice = (
        "(module"
        + HEADER
        + f"""
  (data (i32.const 0) "{escaped}")
  (func (export "realm_sampler_step") (param $n i32) (result i32)
    (drop (call $decide (i32.const 0) (i32.const {len(body)})))
    (if (i32.ne (call $decide (i32.const 0) (i32.const {len(body)})) (i32.const -1)) (then unreachable))
    (i32.const 0)))
"""
    )
    inst, _ = await instance(sandbox, twice)
    assert [d.kind for d in await step(inst, steps(1))] == ["stop"]


async def test_deciding_outside_a_step_is_unsupported(sandbox: Sandbox) -> None:
    # realm_run decides: an invocation is no sampler step.
    wat = (
        "(module"
        + HEADER.replace('(func (export "realm_run") (result i32) (i32.const 0))', "")
        + """
  (data (i32.const 0) "{\\"decisions\\":[]}")
  (func (export "realm_run") (result i32)
    (if (i32.ne (call $decide (i32.const 0) (i32.const 16)) (i32.const -9)) (then unreachable))
    (i32.const 0)))
"""
    )
    from test_sandbox_core import make_ctx

    ctx, _ = make_ctx("acme", FakeServices())
    # The guest traps unless decide returned -unsupported (9).
    assert (await sandbox.invoke(module(sandbox, wat), ctx, SandboxLimits())).output == ""


async def test_a_step_may_tokenize_but_not_read_the_input(sandbox: Sandbox) -> None:
    # encode-tokens works (3 ids, 12 bytes), realm_input is unsupported (-9): else unreachable.
    wat = answering(
        '{"decisions":[{"kind":"sample"}]}',
        steps="(if (i32.ne (i32.wrap_i64"
        " (call $enc (i32.const 100) (i32.const 1) (i32.const 100) (i32.const 3))) (i32.const 12))"
        " (then unreachable))"
        "(if (i32.ne (i32.wrap_i64 (call $input)) (i32.const -9)) (then unreachable))",
    ).replace(
        "(memory (export",
        '(import "realm" "realm_encode_tokens" (func $enc (param i32 i32 i32 i32) (result i64)))\n'
        '  (import "realm" "realm_input" (func $input (result i64)))\n'
        '  (data (i32.const 100) "abc")\n  (memory (export',
    )
    inst, ctx = await instance(sandbox, wat)
    assert [d.kind for d in await step(inst, steps(1))] == ["sample"]
    assert ctx.host_calls["encode_tokens"] == 1


async def test_submit_answers_on_the_instance_thread(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, TOP)
    got: list[tuple[object, str]] = []
    done = threading.Event()

    def answer(outcome: object) -> None:
        got.append((outcome, threading.current_thread().name))
        done.set()

    inst.submit(steps(5), answer)
    assert await asyncio.to_thread(done.wait, 30)
    assert got == [([TokenDecision(kind="token", token=5)], "realm-sampler-acme_0")]
    inst.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_the_instance_thread_runs_at_guest_priority(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, TOP)
    niceness: list[int] = []
    done = threading.Event()

    def answer(_: object) -> None:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        done.set()

    inst.submit(steps(5), answer)
    assert await asyncio.to_thread(done.wait, 30)
    assert niceness == [min(19, os.getpriority(os.PRIO_PROCESS, 0) + sandbox.guest_nice)]
    inst.close()


def test_the_step_input_is_the_documented_json() -> None:
    assert json.loads(steps(5).model_dump_json()) == {
        "steps": [
            {
                "id": 1,
                "config": "c",
                "step": 3,
                "candidates": [
                    {"token": 5, "logprob": -0.1, "text": "a"},
                    {"token": 6, "logprob": -2.5, "text": "b"},
                ],
                "tokens": [7, 8, 9],
            }
        ]
    }


@pytest.mark.parametrize(
    ("ptr", "length", "code"),
    [("0xfffffff0", "64", 2), ("0", "0x200000", 7), ("0", "-1", 7)],
)
async def test_a_decide_outside_memory_or_too_large_is_refused(
    sandbox: Sandbox, ptr: str, length: str, code: int
) -> None:
    # realm_sampler_decide must return -code, else the guest traps; with no decision the step is
    # then sampler_invalid (and not a trap of the host).
    wat = (
        "(module"
        + HEADER
        + f"""
  (func (export "realm_sampler_step") (param $n i32) (result i32)
    (if (i32.ne (call $decide (i32.const {ptr}) (i32.const {length})) (i32.const -{code})) (then unreachable))
    (i32.const 0)))
"""
    )
    inst, _ = await instance(sandbox, wat)
    assert (await failed(inst, steps(1))).code == "sampler_invalid"


async def test_warm_instantiates_ahead_of_the_first_step(sandbox: Sandbox) -> None:
    # _initialize counts once per instance: a second warm finds the instance and runs nothing.
    counting = TOP.replace(
        "(memory (export",
        "(global $inits (mut i32) (i32.const 0))\n"
        '  (func (export "_initialize") (global.set $inits (i32.add (global.get $inits) (i32.const 1))))\n'
        "  (memory (export",
    )
    inst, _ = await instance(sandbox, counting)
    await asyncio.wrap_future(inst.warm())
    await asyncio.wrap_future(inst.warm())
    assert await step(inst, steps(3)) == [TokenDecision(kind="token", token=3)]
    assert inst.instantiations == 1


async def test_warm_reports_a_module_without_a_sampler(sandbox: Sandbox) -> None:
    inst, _ = await instance(sandbox, "(module" + HEADER + ")")
    with pytest.raises(SamplerFailed) as info:
        await asyncio.wrap_future(inst.warm())
    assert (info.value.code, info.value.message) == ("sampler_trap", "the module exports no sampler")

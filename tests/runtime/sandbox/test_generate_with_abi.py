"""realm_generate_with (ABI 1.2) from a core module, hostile arguments first: every bad pointer,
size or payload is a code back to the guest, and nothing reaches the services. Guests are WAT
inline; the services are a fake at the HostServices seam that records what reached them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import pytest
import wasmtime
from test_sandbox_core import FakeServices

from realm.runtime.sandbox import Sandbox, SandboxLimits
from realm.runtime.sandbox.abi import (
    MAX_CONSTRAINT_CHARS,
    ErrorCode,
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    HostError,
)
from realm.runtime.sandbox.context import InvocationContext

# Calls realm_generate_with(PTR, LEN) on its input (copied to 65536) and emits "#" and
# chr(64 + code), or "#+" and the result. PTR and LEN are replaced per test.
GUEST = """(module
  (import "realm" "realm_input" (func $input (result i64)))
  (import "realm" "realm_result_read" (func $read (param i32 i32) (result i32)))
  (import "realm" "realm_emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "realm_generate_with" (func $gen (param i32 i32) (result i64)))
  (memory (export "memory") 40)
  (func (export "realm_abi_version") (result i32) (i32.const 0x10002))
  (func (export "realm_run") (result i32) (local $n i32) (local $r i64)
    (local.set $n (i32.wrap_i64 (call $input)))
    (drop (call $read (i32.const 65536) (local.get $n)))
    (local.set $r (call $gen (i32.const PTR) (LEN)))
    (i32.store8 (i32.const 0) (i32.const 35))
    (i32.store8 (i32.const 1) (if (result i32) (i64.lt_s (local.get $r) (i64.const 0))
      (then (i32.add (i32.const 64) (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))
      (else (i32.const 43))))
    (drop (call $emit (i32.const 0) (i32.const 2)))
    (if (i64.ge_s (local.get $r) (i64.const 0)) (then
      (drop (call $read (i32.const 2097152) (i32.wrap_i64 (local.get $r))))
      (drop (call $emit (i32.const 2097152) (i32.wrap_i64 (local.get $r))))))
    (i32.const 0)))
"""


class Services(FakeServices):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[GenerateParams, GenerateOptions]] = []

    async def generate_with(
        self,
        tenant: str,
        params: GenerateParams,
        options: GenerateOptions,
        on_text: Callable[[str], None] | None,
    ) -> GenerationDetail:
        self.asked.append((params, options))
        if options.sampler is not None:
            raise HostError(ErrorCode.SAMPLER_TIMEOUT, "the sampler passed its step budget")
        if on_text is not None:
            on_text("{}")
        return GenerationDetail(text="{}", finish_reason="stop", prompt_tokens=1, completion_tokens=1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("wasm-cache"), max_workers=2)
    yield sb
    sb.close()


async def run(
    sandbox: Sandbox, body: object, ptr: str = "65536", length: str = "local.get $n"
) -> tuple[str, Services, list[str]]:
    wat = GUEST.replace("PTR", ptr).replace("(LEN)", f"({length})")
    module = sandbox.load("acme", bytes(wasmtime.wat2wasm(wat)))
    services = Services()
    streamed: list[str] = []
    ctx = InvocationContext(
        tenant="acme",
        input_data=body if isinstance(body, str) else json.dumps(body),
        services=services,
        loop=asyncio.get_running_loop(),
        on_output=streamed.append,
    )
    result = await sandbox.invoke(module, ctx, SandboxLimits())
    return result.output, services, streamed


def code(output: str) -> int:
    return ord(output[1]) - 64


PARAMS = {"model": "m", "prompt": "hi"}


async def test_a_valid_call_reaches_the_services_with_the_defaults(sandbox: Sandbox) -> None:
    out, services, _ = await run(sandbox, {"params": PARAMS})
    assert out.startswith("#+") and json.loads(out[2:])["tokens"] == []
    assert services.asked == [(GenerateParams(model="m", prompt="hi"), GenerateOptions())]


async def test_stream_emits_the_text_as_it_comes(sandbox: Sandbox) -> None:
    _, _, streamed = await run(sandbox, {"params": PARAMS, "options": {"stream": True}})
    assert streamed[0] == "{}"


async def test_a_refusal_of_the_services_is_its_code(sandbox: Sandbox) -> None:
    out, _, _ = await run(sandbox, {"params": PARAMS, "options": {"sampler": {"config": "", "top_k": 1}}})
    assert code(out) == ErrorCode.SAMPLER_TIMEOUT


@pytest.mark.parametrize(
    "options",
    [
        {"logprobs": 21},
        {"logprobs": -1},
        {"sampler": {"config": "", "top_k": 0}},
        {"sampler": {"config": "", "top_k": 65}},
        {"sampler": {"config": "", "top_k": -5}},
        {"sampler": {"config": "", "top_k": 1 << 70}},
        {"sampler": {"config": "x" * 5000, "top_k": 1}},
        {"sampler": {"top_k": 1, "extra": True}},
        {"constraint": {"type": "xml", "value": "<a/>"}},
        {"constraint": {"type": "regex"}},
        {"constraint": {"type": "json_object", "value": "{}"}},
        {"constraint": {"type": "regex", "value": "a" * (MAX_CONSTRAINT_CHARS + 1)}},
        {"stream": "yes"},
        {"unknown": 1},
    ],
)
async def test_options_out_of_bounds_are_invalid_arguments(
    sandbox: Sandbox, options: dict[str, object]
) -> None:
    out, services, _ = await run(sandbox, {"params": PARAMS, "options": options})
    assert (code(out), services.asked) == (ErrorCode.INVALID_ARGUMENT, [])


@pytest.mark.parametrize("body", ["{", "[]", '"text"', '{"options": {}}'])
async def test_bad_json_is_an_invalid_argument(sandbox: Sandbox, body: str) -> None:
    out, services, _ = await run(sandbox, body)
    assert (code(out), services.asked) == (ErrorCode.INVALID_ARGUMENT, [])


@pytest.mark.parametrize(
    ("ptr", "length", "expected"),
    [
        ("0xfffffff0", "i32.const 64", ErrorCode.OUT_OF_BOUNDS),  # wraps in 32 bits, not in 64
        ("2621000", "i32.const 1000", ErrorCode.OUT_OF_BOUNDS),  # past the 40 pages
        ("0", "i32.const 1048577", ErrorCode.TOO_LARGE),
        ("0", "i32.const -1", ErrorCode.TOO_LARGE),
    ],
)
async def test_bad_ranges_are_refused_before_reading(
    sandbox: Sandbox, ptr: str, length: str, expected: int
) -> None:
    out, services, _ = await run(sandbox, {"params": PARAMS}, ptr=ptr, length=length)
    assert (code(out), services.asked) == (expected, [])

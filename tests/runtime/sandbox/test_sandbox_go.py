"""The Go SDK (sdk/go) and its examples, run through the real sandbox.

Every test deploys or loads a Go example into `realm.runtime.sandbox.Sandbox` and invokes it
with `Sandbox.invoke`, so the real `realm` import module (core_binding.py), the real
InvocationContext and the real limits serve it. The only stand-in is `FakeServices`, a fake
at the HostServices seam (the runtime's engine services: generate, tokenize, model info),
with deterministic fake models instead of llama.cpp. These tests check the SDK's side of the
ABI (exports, pointer passing, result staging, error codes) against the host that production
uses, and that hostile Go modules are contained by the sandbox's limits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence

import pytest
import wasmtime
from go_builds import GoUnavailable, build_go_example, example_names

from realm.runtime.api.errors import invocation_status
from realm.runtime.sandbox import InvocationFailed, InvocationResult, Sandbox, SandboxLimits, TenantModule
from realm.runtime.sandbox.abi import (
    CORE_IMPORT_MODULE,
    CORE_RUN_EXPORT,
    CORE_VERSION_EXPORT,
    ErrorCode,
    GeneratedToken,
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    GenerationPayload,
    HostError,
    InvocationErrorCode,
    ModelInfoPayload,
)
from realm.runtime.sandbox.context import InvocationContext

try:
    build_go_example("echo")
except GoUnavailable as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"Go toolchain unavailable: {e}", allow_module_level=True)

ALLOWED_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
TENANT = "acme"
# Examples that call realm.SetSampler, and so declare ABI 1.2.
SAMPLER_EXAMPLES = {"json_rule", "lipogram", "spin_sampler", "top_sampler"}
# Go examples that call the ABI 1.3 tools functions (and import them; they still declare 1.1: a
# host checks imports by name at deploy).
TOOLS_EXAMPLES = {"agent"}


class FakeServices:
    """A fake at the HostServices seam (the runtime's engine services), not at the ABI: the
    `realm` host functions, pointer checks and result staging are the real core binding.

    Generations are "[<model>]" and " <n> chars" (n = prompt length), streamed as those two
    chunks; tokens are code points; every allowed model is version "fake-1". Records every
    GenerateParams it receives. With `gate` set, a streaming generate waits for it after its
    chunks have gone out.
    """

    def __init__(self) -> None:
        self.params: list[GenerateParams] = []
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.options: list[GenerateOptions] = []
        # What generate_with returns as text, or the HostError it raises.
        self.detail: str | HostError = "{}"

    @staticmethod
    def _allowed(model: str) -> None:
        if model not in ALLOWED_MODELS:
            raise HostError(ErrorCode.MODEL_NOT_ALLOWED, f"model {model!r} is not allowed")

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        self.calls.append("generate")
        self.params.append(params)
        self._allowed(params.model)
        pieces = [f"[{params.model}]", f" {len(params.prompt)} chars"]
        if on_text is not None:
            for piece in pieces:
                on_text(piece)
            if self.gate is not None:
                await self.gate.wait()
        return GenerationPayload(
            text="".join(pieces),
            finish_reason="stop",
            prompt_tokens=len(params.prompt.split()),
            completion_tokens=len(pieces),
        )

    async def generate_with(
        self,
        tenant: str,
        params: GenerateParams,
        options: GenerateOptions,
        on_text: Callable[[str], None] | None,
    ) -> GenerationDetail:
        """`self.detail` as the text (one token per character, logprob -0.5, with `options.logprobs`
        alternatives), or the HostError it holds, raised."""
        self.calls.append("generate_with")
        self.params.append(params)
        self.options.append(options)
        self._allowed(params.model)
        if isinstance(self.detail, HostError):
            raise self.detail
        tokens = (
            [GeneratedToken(token=ord(c), logprob=-0.5, top=[]) for c in self.detail]
            if options.logprobs is not None
            else []
        )
        return GenerationDetail(
            text=self.detail,
            finish_reason="stop",
            prompt_tokens=len(params.prompt.split()),
            completion_tokens=len(self.detail),
            tokens=tokens,
        )

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        self.calls.append("encode")
        self._allowed(model)
        return [ord(c) for c in text]

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        self.calls.append("decode")
        self._allowed(model)
        return "".join(map(chr, tokens))

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        self.calls.append("model_info")
        self._allowed(model)
        return ModelInfoPayload(
            name=model,
            version="fake-1",
            engine="fake",
            context_length=2048,
            vocab_size=49152,
            has_chat_template=True,
        )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("go-wasm-cache"), max_workers=8)
    yield sb
    sb.close()


def load(sandbox: Sandbox, name: str) -> TenantModule:
    return sandbox.load(TENANT, build_go_example(name).read_bytes())


def make_ctx(
    services: FakeServices, input_data: str = "", on_output: Callable[[str], None] | None = None
) -> tuple[InvocationContext, list[str]]:
    streamed: list[str] = []

    def deliver(chunk: str) -> None:
        streamed.append(chunk)
        if on_output is not None:
            on_output(chunk)

    ctx = InvocationContext(
        tenant=TENANT,
        input_data=input_data,
        services=services,
        loop=asyncio.get_running_loop(),
        on_output=deliver,
    )
    return ctx, streamed


async def run(
    sandbox: Sandbox,
    name: str,
    input_data: str = "",
    *,
    services: FakeServices | None = None,
    limits: SandboxLimits | None = None,
) -> InvocationResult:
    ctx, _ = make_ctx(services or FakeServices(), input_data)
    return await sandbox.invoke(load(sandbox, name), ctx, limits or SandboxLimits())


async def failure(
    sandbox: Sandbox,
    name: str,
    input_data: str = "",
    *,
    services: FakeServices | None = None,
    limits: SandboxLimits | None = None,
) -> tuple[InvocationFailed, InvocationContext]:
    ctx, _ = make_ctx(services or FakeServices(), input_data)
    with pytest.raises(InvocationFailed) as info:
        await sandbox.invoke(load(sandbox, name), ctx, limits or SandboxLimits())
    return info.value, ctx


# ---- loading ----------------------------------------------------------------------------------


def test_examples_load_with_abi_1_1_or_with_a_sampler_1_2(sandbox: Sandbox) -> None:
    # Sandbox.load checks the imports against the real `realm` module, the exports, and runs
    # _initialize and realm_abi_version: a Go example that loads speaks the ABI. Only a module that
    # sets a sampler declares 1.2 (and imports realm_sampler_decide), so the others still deploy
    # on a 1.1 host.
    for name in example_names():
        path = build_go_example(name)
        module = sandbox.load(TENANT, path.read_bytes())
        version = (1, 2) if name in SAMPLER_EXAMPLES else (1, 1)
        assert (module.kind, module.abi_version, module.needs_wasi) == ("core", version, True), name
        decides = any(i.name == "realm_sampler_decide" for i in module.artifact.imports)
        assert decides == (name in SAMPLER_EXAMPLES), name
        fetches = any(i.name == "realm_http_fetch" for i in module.artifact.imports)
        assert fetches == (name in TOOLS_EXAMPLES), name
        assert isinstance(module.artifact, wasmtime.Module)
        exports = {e.name for e in module.artifact.exports}
        assert {"memory", "_initialize", CORE_VERSION_EXPORT, CORE_RUN_EXPORT} <= exports, name
        imported = {i.module for i in module.artifact.imports}
        assert imported <= {CORE_IMPORT_MODULE, "wasi_snapshot_preview1"}, name


def test_deploy_makes_the_go_module_current(sandbox: Sandbox) -> None:
    module = sandbox.deploy("go-deploy", build_go_example("echo").read_bytes())
    try:
        assert sandbox.current("go-deploy") == module
        assert module.abi_version == (1, 1)
    finally:
        sandbox.remove("go-deploy")


# ---- round trips ------------------------------------------------------------------------------


async def test_echo_returns_its_input(sandbox: Sandbox) -> None:
    data = json.dumps({"hello": "wörld", "n": [1, 2, 3]})
    services = FakeServices()
    result = await run(sandbox, "echo", data, services=services)
    assert result.output == data
    assert result.host_calls["input"] == 1 and result.host_calls["emit"] >= 1
    assert services.calls == []
    # a second invocation of the same module is a fresh instance: nothing carries over
    assert (await run(sandbox, "echo", "x")).output == "x"


async def test_chat_sends_snake_case_params(sandbox: Sandbox) -> None:
    services = FakeServices()
    result = await run(sandbox, "chat", json.dumps({"question": "Why is the sky blue?"}), services=services)
    # The host parses the request with GenerateParams (extra fields forbidden): had the SDK sent
    # camelCase keys the call would have failed with invalid-argument instead of arriving here.
    [params] = services.params
    assert params.model == "smollm2-135m-instruct"
    assert params.max_tokens == 32 and params.temperature == 0
    assert params.stop == ["<|im_end|>"]
    assert "Why is the sky blue?" in params.prompt
    answer = json.loads(result.output)["answer"]
    assert answer == f"[smollm2-135m-instruct] {len(params.prompt)} chars"
    assert result.host_calls["generate"] == 1


async def test_json_extract_sends_its_schema_as_a_constraint(sandbox: Sandbox) -> None:
    services = FakeServices()
    services.detail = '{"name":"Ann","age":41,"city":"Oslo"}'
    result = await run(
        sandbox, "json_extract", json.dumps({"text": "Ann, 41, lives in Oslo."}), services=services
    )
    [options] = services.options
    assert options.constraint is not None and options.constraint.type == "json_schema"
    assert json.loads(options.constraint.value)["required"] == ["name", "age", "city"]
    assert (options.sampler, options.logprobs, options.stream) == (None, None, False)
    assert services.params[0].max_tokens == 128 and "Ann, 41, lives in Oslo." in services.params[0].prompt
    assert json.loads(result.output) == {
        "data": {"name": "Ann", "age": 41, "city": "Oslo"},
        "completion_tokens": 37,
    }
    assert result.host_calls["generate_with"] == 1


async def test_an_invalid_constraint_reaches_the_go_guest_by_its_code(sandbox: Sandbox) -> None:
    services = FakeServices()
    services.detail = HostError(ErrorCode.INVALID_CONSTRAINT, "the schema does not compile: nope")
    failed, _ = await failure(
        sandbox, "json_extract", json.dumps({"text": "x", "schema": {"type": 5}}), services=services
    )
    assert failed.code == InvocationErrorCode.TENANT_ERROR
    assert failed.message == (
        f"{CORE_RUN_EXPORT} returned 1: realm: realm_generate_with: invalid_constraint (15): "
        "the schema does not compile: nope"
    )
    assert services.options[0].constraint is not None and json.loads(
        services.options[0].constraint.value
    ) == {"type": 5}


async def test_samplers_ask_for_their_sampler_spec(sandbox: Sandbox) -> None:
    services = FakeServices()
    services.detail = "Hi"
    await run(sandbox, "lipogram", json.dumps({"prompt": "Say hi"}), services=services)
    await run(sandbox, "top_sampler", json.dumps({"prompt": "Say hi"}), services=services)
    await run(sandbox, "top_sampler", json.dumps({"prompt": "Say hi", "builtin": True}), services=services)
    await run(sandbox, "json_rule", "{}", services=FakeServices())
    lipogram, top, builtin = services.options
    assert lipogram.sampler is not None and (lipogram.sampler.config, lipogram.sampler.top_k) == ("eE", 64)
    assert top.sampler is not None and top.sampler.top_k == 1
    assert builtin.sampler is None


async def test_a_sampler_timeout_reaches_the_go_guest_as_err_sampler_timeout(sandbox: Sandbox) -> None:
    # The host ends the generation; the guest sees ErrSamplerTimeout and reports it itself.
    services = FakeServices()
    services.detail = HostError(ErrorCode.SAMPLER_TIMEOUT, "the sampler passed its 20 ms step budget")
    result = await run(sandbox, "spin_sampler", "{}", services=services)
    assert json.loads(result.output) == {
        "error": "sampler_timeout",
        "code": 16,
        "message": "the sampler passed its 20 ms step budget",
    }


async def test_chat_without_question_is_a_tenant_error(sandbox: Sandbox) -> None:
    services = FakeServices()
    failed, ctx = await failure(sandbox, "chat", "{}", services=services)
    assert failed.code == InvocationErrorCode.TENANT_ERROR
    assert invocation_status(failed.code) == 422
    # the SDK logged the handler's error at level error; realm_run returned 1 (ExitError)
    assert failed.message == f'{CORE_RUN_EXPORT} returned 1: input needs a "question"'
    assert ctx.output == []
    assert services.calls == []


async def test_chain_uses_both_models(sandbox: Sandbox) -> None:
    services = FakeServices()
    result = await run(sandbox, "chain", json.dumps({"question": "What is WebAssembly?"}), services=services)
    assert [p.model for p in services.params] == list(ALLOWED_MODELS)
    draft_params, edit_params = services.params
    assert draft_params.stop == ["<|im_end|>"] and edit_params.stop == ["<end_of_turn>"]
    out = json.loads(result.output)
    assert out["draft"] == f"[smollm2-135m-instruct] {len(draft_params.prompt)} chars"
    assert out["draft"] in edit_params.prompt  # the draft went into the second prompt
    assert out["answer"].startswith("[gemma-3-270m]")
    assert out["models"] == dict.fromkeys(ALLOWED_MODELS, "fake-1")
    assert result.host_calls["get_model_version"] == 2


async def test_stream_output_arrives_before_the_result(sandbox: Sandbox) -> None:
    services = FakeServices()
    services.gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[str] = asyncio.Queue()

    def on_output(chunk: str) -> None:  # on the worker thread
        loop.call_soon_threadsafe(arrived.put_nowait, chunk)

    ctx, streamed = make_ctx(services, json.dumps({"prompt": "Once upon a time"}), on_output)
    task = asyncio.create_task(sandbox.invoke(load(sandbox, "stream"), ctx, SandboxLimits()))
    try:
        # Both chunks reach on_output while the guest is still inside realm_host_generate_stream.
        first = await asyncio.wait_for(arrived.get(), 30)
        second = await asyncio.wait_for(arrived.get(), 30)
        assert [first, second] == ["[smollm2-135m-instruct]", " 16 chars"]
        assert not task.done()
    finally:
        services.gate.set()
    result = await task
    summary = "\n[stop: 4 prompt + 2 completion tokens]\n"
    assert streamed == ["[smollm2-135m-instruct]", " 16 chars", summary]
    assert result.output == "".join(streamed)
    assert result.host_calls["generate_stream"] == 1
    [params] = services.params
    assert params.max_tokens == 32 and params.prompt == "Once upon a time"


async def test_tokens_round_trip(sandbox: Sandbox) -> None:
    services = FakeServices()
    result = await run(sandbox, "tokens", json.dumps({"text": "héllo ✓"}), services=services)
    out = json.loads(result.output)
    assert out["tokens"] == [ord(c) for c in "héllo ✓"]
    assert out["text"] == "héllo ✓"
    assert ModelInfoPayload.model_validate(out["model"]).context_length == 2048
    assert services.calls == ["model_info", "encode", "decode"]


# ---- hostile guests ---------------------------------------------------------------------------


async def test_badptr_gets_out_of_bounds(sandbox: Sandbox) -> None:
    services = FakeServices()
    result = await run(sandbox, "badptr", '{"any": "input"}', services=services)
    codes = json.loads(result.output)
    assert codes.keys() == {"emit", "emit_wrap", "log", "generate", "encode", "decode", "result_read"}
    assert set(codes.values()) == {-ErrorCode.OUT_OF_BOUNDS}, codes
    assert services.calls == []  # nothing out of bounds reached the services


async def test_panic_fails_after_the_first_chunk(sandbox: Sandbox) -> None:
    failed, ctx = await failure(sandbox, "panic", "{}")
    assert failed.code == InvocationErrorCode.TENANT_ERROR
    # realm_run returned 2 (ExitPanic): the SDK recovered and logged the panic at level error
    assert failed.message.startswith(f"{CORE_RUN_EXPORT} returned 2: panic: assignment to entry in nil map")
    assert ctx.output == ["first chunk\n"]
    assert ctx.last_error_log is not None and ctx.last_error_log.startswith("panic:")


async def test_unrecoverable_go_crash_is_a_trap(sandbox: Sandbox) -> None:
    # "fatal error: all goroutines are asleep": the Go runtime aborts with `unreachable`
    failed, ctx = await failure(sandbox, "panic", '{"fatal": true}')
    assert failed.code == InvocationErrorCode.TRAP
    assert invocation_status(failed.code) == 422
    assert "unreachable" in failed.message
    assert ctx.output == ["first chunk\n"]  # what was emitted before the crash was delivered


async def test_spin_is_interrupted_by_the_deadline(sandbox: Sandbox) -> None:
    failed, _ = await failure(sandbox, "spin", limits=SandboxLimits(deadline_ms=100))
    assert failed.code == InvocationErrorCode.TIMEOUT
    assert invocation_status(failed.code) == 504
    # the sandbox is unharmed: the next invocation runs
    assert (await run(sandbox, "echo", "after spin")).output == "after spin"


async def test_spin_runs_out_of_fuel(sandbox: Sandbox) -> None:
    fuel = 50_000_000
    # the same budget is plenty for the Go runtime's start-up and a whole echo invocation,
    # so what exhausts it below is the spinning handler
    echo = await run(sandbox, "echo", "x", limits=SandboxLimits(fuel=fuel))
    assert echo.fuel_used is not None and echo.fuel_used < fuel
    failed, _ = await failure(sandbox, "spin", limits=SandboxLimits(fuel=fuel))
    assert failed.code == InvocationErrorCode.FUEL_EXHAUSTED


async def test_oom_hits_the_memory_limit(sandbox: Sandbox) -> None:
    # memory.grow fails at the cap (it returns -1, no error); the Go runtime then prints
    # "fatal error: out of memory" to stderr (which goes nowhere) and aborts with
    # `unreachable`: the runner reports a wasm_trap, not wasm_memory_limit (that one is for a
    # module whose initial memory exceeds the cap at instantiation).
    failed, _ = await failure(sandbox, "oom", limits=SandboxLimits(memory_mib=32))
    assert failed.code == InvocationErrorCode.TRAP
    assert invocation_status(failed.code) == 422
    assert "unreachable" in failed.message
    assert (await run(sandbox, "echo", "after oom")).output == "after oom"


async def test_initial_memory_over_a_tiny_cap_is_a_memory_limit(sandbox: Sandbox) -> None:
    # A Go module starts with a few MiB of linear memory; a cap below that fails instantiation.
    module = load(sandbox, "echo")
    assert isinstance(module.artifact, wasmtime.Module)
    [memory] = [e.type for e in module.artifact.exports if e.name == "memory"]
    assert isinstance(memory, wasmtime.MemoryType) and memory.limits.min > 16  # pages: > 1 MiB
    ctx, _ = make_ctx(FakeServices(), "x")
    with pytest.raises(InvocationFailed) as info:
        await sandbox.invoke(module, ctx, SandboxLimits(memory_mib=1))
    assert info.value.code == InvocationErrorCode.MEMORY_LIMIT

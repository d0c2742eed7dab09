"""The component binding (runtime/sandbox/component_binding.py) with real Python guests.

This test is about the binding: WIT values to and from Python, host errors reaching the guest
as `err(host-error)`, the import/export checks, and traps. The `HostServices` behind the
`InvocationContext` is a small fake (the seam context.py defines); the real-engine path, with
runner.py's limits and the HTTP API, is covered by the lead's integration tests.

Guests are built with `realm tenant build` support code and cached across runs
(tests/sandbox_builds.py); the first run spends ~5 s building and ~6 s compiling each.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sandbox_builds import EXAMPLES, ROOT, build_example, build_probe, compile_component
from wasmtime import Config, Engine, Store, WasiConfig, WasmtimeError
from wasmtime.component import Component

from realm.runtime.api.errors import invocation_status
from realm.runtime.sandbox import component_binding as cb
from realm.runtime.sandbox import context
from realm.runtime.sandbox.abi import (
    ABI_MAJOR,
    ABI_MINOR,
    ErrorCode,
    GenerateParams,
    GenerationPayload,
    HostError,
    InvocationErrorCode,
    ModelInfoPayload,
)

FUEL = 2_000_000_000  # a few hundred times what these guests need


class FakeServices:
    """HostServices with one allowed model, "m"; "boom" makes the service itself fail."""

    def __init__(self) -> None:
        self.params: list[GenerateParams] = []

    def _check(self, model: str) -> None:
        if model == "boom":
            raise RuntimeError("the engine fell over")
        if model != "m":
            raise HostError(ErrorCode.MODEL_NOT_ALLOWED, f"model {model!r} is not allowed")

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        self._check(params.model)
        self.params.append(params)
        if on_text is not None:
            for piece in ("Hel", "lo"):
                on_text(piece)
        return GenerationPayload(text="Hello", finish_reason="length", prompt_tokens=3, completion_tokens=2)

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        self._check(model)
        return [ord(c) for c in text]

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        self._check(model)
        return "".join(map(chr, tokens))

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        self._check(model)
        return ModelInfoPayload(
            name=model,
            version="v7",
            engine="fake",
            context_length=2048,
            vocab_size=49152,
            has_chat_template=True,
        )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The runtime's event loop stand-in: host calls hop onto it from the invoking thread."""
    lp = asyncio.new_event_loop()
    thread = threading.Thread(target=lp.run_forever, daemon=True)
    thread.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    thread.join(5)
    lp.close()


@pytest.fixture(scope="module")
def engine() -> Engine:
    cfg = Config()  # configured like runner.py's engine
    cfg.epoch_interruption = True
    cfg.consume_fuel = True
    return Engine(cfg)


@pytest.fixture(scope="module")
def echo(engine: Engine) -> Component:
    return compile_component(engine, build_example("echo"))


@pytest.fixture(scope="module")
def probe(engine: Engine) -> Component:
    return compile_component(engine, build_probe())


class Invoke:
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.services = FakeServices()

    def __call__(
        self,
        component: Component,
        input_data: str,
        *,
        fuel: int = FUEL,
        epochs: int = 1_000_000,
        keep_wasi: bool = False,
    ) -> tuple[str, context.InvocationContext]:
        streamed: list[str] = []
        ctx = context.InvocationContext(
            tenant="t",
            input_data=input_data,
            services=self.services,
            loop=self.loop,
            on_output=streamed.append,
        )
        store = Store(self.engine)  # one Store per invocation, as the runner does
        store.set_fuel(fuel)
        store.set_epoch_deadline(epochs)
        if keep_wasi:  # the runner's way: it sets WASI itself (to capture stdout/stderr)
            store.set_wasi(WasiConfig())
        with context.bound(ctx):
            cb.run_component(self.engine, store, component, keep_store_wasi=keep_wasi)
        assert streamed == ctx.output
        return "".join(ctx.output), ctx

    def json(self, component: Component, input_data: str) -> Any:
        out, _ = self(component, input_data)
        return json.loads(out)


@pytest.fixture
def invoke(engine: Engine, loop: asyncio.AbstractEventLoop) -> Invoke:
    return Invoke(engine, loop)


# ---- echo -------------------------------------------------------------------------------------


def test_echo_returns_its_input(echo: Component, invoke: Invoke, engine: Engine) -> None:
    cb.check_component(engine, echo)
    text = json.dumps({"q": "héllo ✓ \U0001f600", "n": [1, 2]}, ensure_ascii=False)
    out, ctx = invoke(echo, text)
    assert out == text
    assert ctx.host_calls == {"input": 1, "emit": 1}
    out, _ = invoke(echo, "not JSON {", keep_wasi=True)  # echo passes raw text through
    assert out == "not JSON {"


def test_linker_is_built_once_per_engine(engine: Engine) -> None:
    assert cb.build_linker(engine) is cb.build_linker(engine)
    other = Engine()
    assert cb.build_linker(other) is not cb.build_linker(engine)


# ---- host functions through a guest --------------------------------------------------------------


def test_host_error_is_an_err_value_in_the_guest(probe: Component, invoke: Invoke) -> None:
    assert invoke.json(probe, "model-info:gemma-9b") == {
        "err": ["model-not-allowed", "model 'gemma-9b' is not allowed"]
    }
    assert invoke.json(probe, "model-info:m") == {"ok": ["m", "v7", "fake", 2048, 49152, True]}
    assert invoke.json(probe, "version:m") == {"ok": "v7"}
    assert invoke.json(probe, "version:nope")["err"][0] == "model-not-allowed"
    # A failing service (not a HostError) is engine-error, never a trap.
    code, message = invoke.json(probe, "version:boom")["err"]
    assert code == "engine-error" and "the engine fell over" in message


def test_generate_params_and_result(probe: Component, invoke: Invoke) -> None:
    assert invoke.json(probe, "generate:hi ✓") == {"ok": ["Hello", "length", 3, 2]}
    assert invoke.services.params == [
        GenerateParams(
            model="m",
            prompt="hi ✓",
            max_tokens=7,
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            stop=["</s>"],
            seed=2**63,
        )
    ]


def test_generate_stream_emits_while_generating(probe: Component, invoke: Invoke) -> None:
    _, ctx = invoke(probe, "generate-stream:hi")
    assert ctx.output[:2] == ["Hel", "lo"]
    assert json.loads("".join(ctx.output[2:])) == {"ok": ["Hello", "length", 3, 2]}
    assert ctx.host_calls["generate_stream"] == 1


def test_invalid_params_are_invalid_argument(probe: Component, invoke: Invoke) -> None:
    code, message = invoke.json(probe, "generate-invalid:x")["err"]
    assert code == "invalid-argument" and "max_tokens" in message
    assert invoke.services.params == []


def test_tokens_round_trip(probe: Component, invoke: Invoke) -> None:
    ids = [ord(c) for c in "héllo \U0001f600"]
    assert invoke.json(probe, "tokens:héllo \U0001f600") == {"ok": [ids, "héllo \U0001f600"]}


def test_log_reaches_the_runtime_log(
    probe: Component, invoke: Invoke, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="realm.tenant"):
        out, ctx = invoke(probe, "log:hello from the guest")
    assert out == "" and ctx.host_calls["log"] == 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "realm.tenant"] == [
        (logging.WARNING, "tenant t: hello from the guest")
    ]


# ---- how an invocation ends -----------------------------------------------------------------------


def _rejected(e: BaseException) -> tuple[Any, str, Any]:
    code = getattr(e, "code", None)
    status = invocation_status(code) if isinstance(code, InvocationErrorCode) else None
    return code, str(getattr(e, "message", e)), status


def test_tenant_exception_is_tenant_error(probe: Component, invoke: Invoke) -> None:
    with pytest.raises(Exception) as info:
        invoke(probe, "fail:nope")
    assert _rejected(info.value) == (InvocationErrorCode.TENANT_ERROR, "ValueError: nope", 422)
    # A host error the tenant does not catch fails the invocation with its code in the message.
    with pytest.raises(Exception) as info:
        invoke(probe, "unhandled-host-error:gemma-9b")
    code, message, _ = _rejected(info.value)
    assert code == InvocationErrorCode.TENANT_ERROR
    assert message == "model-not-allowed: model 'gemma-9b' is not allowed"


def test_fuel_and_epoch_traps_propagate(probe: Component, invoke: Invoke, engine: Engine) -> None:
    with pytest.raises(WasmtimeError, match="all fuel consumed"):
        invoke(probe, "spin", fuel=50_000_000)
    timer = threading.Timer(0.05, engine.increment_epoch)
    timer.start()
    try:
        with pytest.raises(WasmtimeError, match="wasm trap: interrupt"):
            invoke(probe, "spin", epochs=1)
    finally:
        timer.cancel()
    assert invoke.json(probe, "version:m") == {"ok": "v7"}  # a fresh Store runs fine again


# ---- import/export checks ---------------------------------------------------------------------------

WASI = [
    "wasi:io/poll@0.2.9",
    "wasi:cli/stdout@0.2.9",
    "wasi:sockets/tcp@0.2.0",
    "wasi:filesystem/types@0.2.9",
    "wasi:random/random@0.2.3",
    "wasi:clocks/wall-clock@0.2.9",
]
HOST = ["realm:tenant/types@1.0.0", "realm:tenant/host@1.0.0"]


# A minor version this host does not speak yet.
NEXT_MINOR = f"{ABI_MAJOR}.{ABI_MINOR + 1}.0"


def _code_of(imports: list[str], exports: list[str]) -> InvocationErrorCode | None:
    try:
        cb.check_names(imports, exports)
    except Exception as e:
        code: InvocationErrorCode = e.code  # type: ignore[attr-defined]
        return code
    return None


@pytest.mark.parametrize(
    ("imports", "exports", "expected"),
    [
        (WASI + HOST, ["run", "exports"], None),
        ([*WASI, "realm:tenant/host@1.0.3"], ["run"], None),  # a patch release is compatible
        ([f"realm:tenant/host@{NEXT_MINOR}"], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        (["realm:tenant/host@2.0.0"], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        (["realm:tenant/host@0.9.0"], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        (["realm:tenant/host"], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        ([f"realm:tenant/types@{NEXT_MINOR}", *HOST], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        # 1.1 added `conversations`; a 1.0 host import next to it is fine.
        ([*WASI, *HOST, "realm:tenant/conversations@1.1.0"], ["run"], None),
        ([f"realm:tenant/conversations@{NEXT_MINOR}", *HOST], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        (WASI, ["run"], InvocationErrorCode.ABI_UNSUPPORTED),  # no host import at all
        ([*HOST, "wasi:http/outgoing-handler@0.2.0"], ["run"], InvocationErrorCode.UNKNOWN_IMPORT),
        ([*HOST, "wasi:io/poll@0.3.0"], ["run"], InvocationErrorCode.UNKNOWN_IMPORT),
        # 1.2 added `sampling` (and the types it shares with an exported `sampler`).
        ([*WASI, *HOST, "realm:tenant/sampling@1.2.0", "realm:tenant/sampling-types@1.2.0"], ["run"], None),
        ([*HOST, f"realm:tenant/sampling@{NEXT_MINOR}"], ["run"], InvocationErrorCode.ABI_UNSUPPORTED),
        # 1.3 added `tools`.
        ([*WASI, *HOST, "realm:tenant/tools@1.3.0"], ["run"], None),
        ([*HOST, "realm:tenant/vectors@1.0.0"], ["run"], InvocationErrorCode.UNKNOWN_IMPORT),
        ([*HOST, "acme:evil/net@1.0.0"], ["run"], InvocationErrorCode.UNKNOWN_IMPORT),
        ([*HOST, "generate"], ["run"], InvocationErrorCode.UNKNOWN_IMPORT),
        (HOST, ["main"], InvocationErrorCode.MISSING_EXPORT),
        # The version problem is reported before anything else.
        (
            [f"realm:tenant/host@{NEXT_MINOR}", "wasi:http/types@0.2.0"],
            [],
            InvocationErrorCode.ABI_UNSUPPORTED,
        ),
    ],
)
def test_check_names(imports: list[str], exports: list[str], expected: InvocationErrorCode | None) -> None:
    assert _code_of(imports, exports) == expected


def test_unknown_import_message_names_them() -> None:
    with pytest.raises(Exception, match=re.escape("wasi:http/outgoing-handler@0.2.0, zzz:a/b@1.0.0")) as info:
        cb.check_names([*HOST, "zzz:a/b@1.0.0", "wasi:http/outgoing-handler@0.2.0"], ["run"])
    assert _rejected(info.value)[2] == 422


def _wat_component(engine: Engine, host_version: str, run: str) -> Component:
    return Component(
        engine,
        f"""(component
          (import "realm:tenant/host@{host_version}" (instance))
          (core module $m (func (export "run")))
          (core instance $i (instantiate $m))
          (func (export "{run}") (canon lift (core func $i "run"))))""",
    )


def test_check_component_reads_the_component_type(engine: Engine, probe: Component) -> None:
    cb.check_component(engine, probe)
    with pytest.raises(Exception) as info:
        cb.check_component(engine, _wat_component(engine, NEXT_MINOR, "run"))
    assert _rejected(info.value)[0] == InvocationErrorCode.ABI_UNSUPPORTED
    with pytest.raises(Exception) as info:
        cb.check_component(engine, _wat_component(engine, "1.0.0", "start"))
    assert _rejected(info.value)[0] == InvocationErrorCode.MISSING_EXPORT
    # `run` exported with the wrong type (func() instead of func() -> result<_, string>).
    with pytest.raises(Exception, match="not `func\\(\\) -> result") as info:
        cb.check_component(engine, _wat_component(engine, "1.0.0", "run"))
    assert _rejected(info.value)[0] == InvocationErrorCode.MISSING_EXPORT


# ---- the other examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chat", "chain", "stream"])
def test_examples_build_and_pass_the_checks(name: str, engine: Engine) -> None:
    """They componentize and this host would run them; running them against real models is the
    integration tests' job (build_example gives them the paths)."""
    wasm = build_example(name)
    assert wasm.stat().st_size > 1_000_000
    cb.check_component(engine, compile_component(engine, wasm))


def _load_app(name: str) -> ModuleType:
    sdk = str(ROOT / "sdk" / "python")
    if sdk not in sys.path:
        sys.path.insert(0, sdk)
    spec = importlib.util.spec_from_file_location(f"realm_example_{name}", EXAMPLES / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_on_plain_python_with_the_sdk_fake() -> None:
    """realm_tenant.testing, as the SDK README tells tenant authors to use it."""
    _load_app("echo")
    from realm_tenant.testing import FakeHost

    chat = FakeHost(input={"question": "Why is the sky blue?"}, generate=lambda p: " Rayleigh scattering. ")
    result = chat.run(_load_app("chat").WitWorld)
    assert result.ok and result.json() == {"answer": "Rayleigh scattering."}
    assert chat.calls[0].model == "smollm2-135m-instruct" and "<|im_start|>user\nWhy" in chat.calls[0].prompt

    chain = FakeHost(input={"question": "2+2?"}, generate=lambda p: "4" if "smollm" in p.model else "Four.")
    result = chain.run(_load_app("chain").WitWorld)
    assert result.json() == {
        "draft": "4",
        "answer": "Four.",
        "models": {"smollm2-135m-instruct": "1", "gemma-3-270m": "1"},
    }

    stream = FakeHost(input={"prompt": "Once"}, generate=lambda p: "upon a time")
    result = stream.run(_load_app("stream").WitWorld)
    assert result.chunks[:3] == ["upon", " a", " time"]
    assert result.output.endswith("[stop: 4 prompt + 11 completion tokens]\n")

    bad = FakeHost(input={}).run(_load_app("chat").WitWorld)
    assert not bad.ok and bad.error == 'ValueError: input needs a "question"'
    denied = FakeHost(input={"question": "x"}, models={}).run(_load_app("chat").WitWorld)
    assert denied.error is not None and denied.error.startswith("model-not-allowed:")


def test_build_errors_are_clear(tmp_path: Path) -> None:
    from realm.tenant_build import TenantBuildError, build_tenant

    with pytest.raises(TenantBuildError, match="cannot tell the language"):
        build_tenant(tmp_path, tmp_path / "out.wasm")
    (tmp_path / "app.py").write_text("this is not python(\n")
    with pytest.raises(TenantBuildError, match="componentize-py failed") as info:
        build_tenant(tmp_path, tmp_path / "out.wasm")
    assert "SyntaxError" in str(info.value)
    assert not (tmp_path / "out.wasm").exists()
    assert not list(tmp_path.glob(".out.wasm.*"))  # no half-written output left behind


def test_the_sdk_names_a_version_and_splits_what_it_reports() -> None:
    """model_version("name@v2") through realm_tenant.testing's FakeHost, and split_model_version."""
    _load_app("echo")  # puts the SDK on sys.path
    import realm_tenant as rt
    from realm_tenant.testing import FakeHost

    class Versions(rt.Tenant):
        def main(self) -> None:
            rt.emit_json(rt.split_model_version(rt.model_version("smollm2-135m-instruct@v2")))

    assert FakeHost().run(Versions).json() == ["v2", "sha256:" + "0" * 64]

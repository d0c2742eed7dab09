"""The Go SDK (sdk/go) and its examples, run in wasmtime against a fake host.

`FakeHost` stands in for the real core-module binding at the host seam: it implements the
`realm` import module (core-module ABI v1, docs/abi.md) over in-memory data, so these tests
check the SDK's side of the ABI (exports, pointer passing, result staging, error codes) and
that hostile modules are contained by wasmtime's limits, without a runtime or a model.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime
from go_builds import GoUnavailable, build_go_example, example_names
from pydantic import ValidationError

from realm.runtime.sandbox.abi import (
    ABI_MAJOR,
    ABI_MINOR,
    CORE_IMPORT_MODULE,
    CORE_RUN_EXPORT,
    CORE_VERSION_EXPORT,
    MAX_PAYLOAD_BYTES,
    ErrorCode,
    GenerateParams,
    Generation,
    ModelInfoPayload,
)

try:
    build_go_example("echo")
except GoUnavailable as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"Go toolchain unavailable: {e}", allow_module_level=True)

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()
MEMORY_LIMIT = 64 << 20
ALLOWED_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


def u32(value: int) -> int:
    """wasmtime-py hands i32 arguments to host functions as signed Python ints: a pointer at
    or above 2 GiB arrives negative, and must be read as unsigned before any bounds check."""
    return value & 0xFFFF_FFFF


class GuestError(Exception):
    """A host call the guest made wrongly: it gets -code."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


@dataclass
class FakeHost:
    """The `realm` import module over in-memory data: deterministic fake models."""

    input_data: str = ""
    output: list[str] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    requests: list[dict[str, object]] = field(default_factory=list)
    pending: bytes | None = None

    # Guest memory.

    @staticmethod
    def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
        mem = caller.get("memory")
        if not isinstance(mem, wasmtime.Memory):
            raise GuestError(ErrorCode.INVALID_ARGUMENT)
        return mem

    def _read(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        if length > MAX_PAYLOAD_BYTES:
            raise GuestError(ErrorCode.TOO_LARGE)
        mem = self._memory(caller)
        if ptr + length > mem.data_len(caller):
            raise GuestError(ErrorCode.OUT_OF_BOUNDS)
        return bytes(mem.read(caller, ptr, ptr + length))

    def _text(self, caller: wasmtime.Caller, ptr: int, length: int) -> str:
        try:
            return self._read(caller, ptr, length).decode()
        except UnicodeDecodeError:
            raise GuestError(ErrorCode.INVALID_UTF8) from None

    def _model(self, caller: wasmtime.Caller, ptr: int, length: int) -> str:
        name = self._text(caller, ptr, length)
        if name not in ALLOWED_MODELS:
            raise GuestError(ErrorCode.MODEL_NOT_ALLOWED)
        return name

    # Fake services.

    def _generate(self, caller: wasmtime.Caller, ptr: int, length: int, stream: bool) -> bytes:
        raw = self._read(caller, ptr, length)
        self.requests.append(json.loads(raw))
        try:
            params = GenerateParams.model_validate_json(raw)
        except ValidationError:
            raise GuestError(ErrorCode.INVALID_ARGUMENT) from None
        if params.model not in ALLOWED_MODELS:
            raise GuestError(ErrorCode.MODEL_NOT_ALLOWED)
        pieces = [f"[{params.model}]", f" {len(params.prompt)} chars"]
        if stream:
            self.output.extend(pieces)
        gen = Generation(
            text="".join(pieces),
            finish_reason="stop",
            prompt_tokens=len(params.prompt.split()),
            completion_tokens=len(pieces),
        )
        return str(gen.model_dump_json()).encode()

    def generate(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        return self._generate(caller, ptr, length, stream=False)

    def generate_stream(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        return self._generate(caller, ptr, length, stream=True)

    def encode_tokens(self, caller: wasmtime.Caller, mp: int, ml: int, tp: int, tl: int) -> bytes:
        self._model(caller, mp, ml)
        text = self._text(caller, tp, tl)
        return struct.pack(f"<{len(text)}I", *(ord(c) for c in text))  # one token a character

    def decode_tokens(self, caller: wasmtime.Caller, mp: int, ml: int, tp: int, n: int) -> bytes:
        self._model(caller, mp, ml)
        tokens = struct.unpack(f"<{n}I", self._read(caller, tp, 4 * n))
        return "".join(map(chr, tokens)).encode()

    def load_model(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        name = self._model(caller, ptr, length)
        info = ModelInfoPayload(
            name=name,
            version="fake-1",
            engine="fake",
            context_length=2048,
            vocab_size=49152,
            has_chat_template=True,
        )
        return str(info.model_dump_json()).encode()

    def model_version(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        return f"{self._model(caller, ptr, length)}@fake-1".encode()

    def input(self, caller: wasmtime.Caller) -> bytes:
        return self.input_data.encode()

    def emit(self, caller: wasmtime.Caller, ptr: int, length: int) -> None:
        self.output.append(self._text(caller, ptr, length))

    def log(self, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
        if not 0 <= level <= 3:
            raise GuestError(ErrorCode.INVALID_ARGUMENT)
        self.logs.append((level, self._text(caller, ptr, length)))

    def result_read(self, caller: wasmtime.Caller, ptr: int, length: int) -> int:
        if self.pending is None:
            raise GuestError(ErrorCode.NO_RESULT)
        if length < len(self.pending):
            raise GuestError(ErrorCode.BUFFER_TOO_SMALL)
        mem = self._memory(caller)
        if ptr + len(self.pending) > mem.data_len(caller):
            raise GuestError(ErrorCode.OUT_OF_BOUNDS)
        mem.write(caller, self.pending, ptr)
        n, self.pending = len(self.pending), None
        return n

    # Wiring.

    def _staged(self, fn: Callable[..., bytes]) -> Callable[..., int]:
        def call(caller: wasmtime.Caller, *args: int) -> int:
            self.pending = None
            try:
                result = fn(caller, *map(u32, args))
            except GuestError as e:
                return -int(e.code)
            if len(result) > MAX_PAYLOAD_BYTES:
                return -int(ErrorCode.TOO_LARGE)
            self.pending = result
            return len(result)

        return call

    @staticmethod
    def _status(fn: Callable[..., int | None]) -> Callable[..., int]:
        def call(caller: wasmtime.Caller, *args: int) -> int:
            try:
                return fn(caller, *map(u32, args)) or 0
            except GuestError as e:
                return -int(e.code)

        return call

    def define(self, linker: wasmtime.Linker) -> None:
        staged: dict[str, tuple[int, Callable[..., bytes]]] = {
            "realm_host_generate": (2, self.generate),
            "realm_host_generate_stream": (2, self.generate_stream),
            "realm_encode_tokens": (4, self.encode_tokens),
            "realm_decode_tokens": (4, self.decode_tokens),
            "realm_host_load_model_by_name": (2, self.load_model),
            "realm_get_model_version": (2, self.model_version),
            "realm_input": (0, self.input),
        }
        for name, (arity, fn) in staged.items():
            ty = wasmtime.FuncType([I32] * arity, [I64])
            linker.define_func(CORE_IMPORT_MODULE, name, ty, self._staged(fn), access_caller=True)
        status: dict[str, tuple[int, Callable[..., int | None]]] = {
            "realm_emit": (2, self.emit),
            "realm_log": (3, self.log),
            "realm_result_read": (2, self.result_read),
        }
        for name, (arity, impl) in status.items():
            ty = wasmtime.FuncType([I32] * arity, [I32])
            linker.define_func(CORE_IMPORT_MODULE, name, ty, self._status(impl), access_caller=True)


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


_modules: dict[str, wasmtime.Module] = {}


def module(engine: wasmtime.Engine, name: str) -> wasmtime.Module:
    if name not in _modules:
        _modules[name] = wasmtime.Module.from_file(engine, str(build_go_example(name)))
    return _modules[name]


@dataclass
class Tenant:
    """One instantiated module, its store and its fake host: one invocation."""

    store: wasmtime.Store
    instance: wasmtime.Instance
    host: FakeHost
    stderr: Path

    def export(self, name: str) -> wasmtime.Func:
        f = self.instance.exports(self.store)[name]
        assert isinstance(f, wasmtime.Func)
        return f

    def run(self) -> int:
        rc = self.export(CORE_RUN_EXPORT)(self.store)
        assert isinstance(rc, int)
        return rc

    @property
    def output(self) -> str:
        return "".join(self.host.output)


def instantiate(
    engine: wasmtime.Engine, mod: wasmtime.Module, host: FakeHost, stderr: Path, *, memory_limit: int
) -> Tenant:
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=memory_limit)
    store.set_epoch_deadline(1 << 30)  # only the tests that want an interrupt tick the epoch
    wasi = wasmtime.WasiConfig()  # nothing inherited: no args, env, preopens or stdio
    wasi.stderr_file = str(stderr)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    host.define(linker)
    instance = linker.instantiate(store, mod)
    tenant = Tenant(store, instance, host, stderr)
    if "_initialize" in instance.exports(store):
        tenant.export("_initialize")(store)
    return tenant


@pytest.fixture
def tenant(engine: wasmtime.Engine, tmp_path: Path) -> Iterator[Callable[..., Tenant]]:
    def make(name: str, input_data: str = "", memory_limit: int = MEMORY_LIMIT) -> Tenant:
        host = FakeHost(input_data=input_data)
        return instantiate(
            engine, module(engine, name), host, tmp_path / f"{name}.stderr", memory_limit=memory_limit
        )

    yield make


def test_examples_export_the_abi(engine: wasmtime.Engine) -> None:
    sizes: dict[str, int] = {}
    for name in example_names():
        path = build_go_example(name)
        sizes[name] = path.stat().st_size
        mod = module(engine, name)
        exports = {e.name: e.type for e in mod.exports}
        assert {"memory", "_initialize", CORE_VERSION_EXPORT, CORE_RUN_EXPORT} <= exports.keys(), name
        for fn in (CORE_VERSION_EXPORT, CORE_RUN_EXPORT):
            ty = exports[fn]
            assert isinstance(ty, wasmtime.FuncType), name
            assert [str(p) for p in ty.params] == [] and [str(r) for r in ty.results] == ["i32"], name
        modules = {i.module for i in mod.imports}
        assert modules <= {CORE_IMPORT_MODULE, "wasi_snapshot_preview1"}, name
    print("\nGo example .wasm sizes:", ", ".join(f"{n} {s / 1e6:.2f} MB" for n, s in sizes.items()))


def test_abi_version(tenant: Callable[..., Tenant]) -> None:
    t = tenant("echo")
    assert t.export(CORE_VERSION_EXPORT)(t.store) == (ABI_MAJOR << 16) | ABI_MINOR == 0x10000


def test_echo_returns_its_input(engine: wasmtime.Engine, tmp_path: Path) -> None:
    data = json.dumps({"hello": "wörld", "n": [1, 2, 3]})
    # Cold: compile from the file, instantiate, _initialize, first call.
    path = build_go_example("echo")
    t0 = time.perf_counter()
    mod = wasmtime.Module.from_file(engine, str(path))
    t1 = time.perf_counter()
    t = instantiate(engine, mod, FakeHost(input_data=data), tmp_path / "stderr", memory_limit=MEMORY_LIMIT)
    t2 = time.perf_counter()
    assert t.run() == 0
    t3 = time.perf_counter()
    assert t.output == data
    # Warm: a new instance of the compiled module.
    t4 = time.perf_counter()
    t = instantiate(engine, mod, FakeHost(input_data="x"), tmp_path / "stderr", memory_limit=MEMORY_LIMIT)
    assert t.run() == 0
    t5 = time.perf_counter()
    assert t.output == "x"
    print(
        f"\necho: compile {1e3 * (t1 - t0):.0f} ms, instantiate+_initialize {1e3 * (t2 - t1):.1f} ms, "
        f"first realm_run {1e3 * (t3 - t2):.1f} ms; warm instantiate+run {1e3 * (t5 - t4):.1f} ms"
    )


def test_chat_sends_snake_case_params(tenant: Callable[..., Tenant]) -> None:
    t = tenant("chat", json.dumps({"question": "Why is the sky blue?"}))
    assert t.run() == 0
    [req] = t.host.requests
    assert req["model"] == "smollm2-135m-instruct"
    assert req["max_tokens"] == 32 and req["temperature"] == 0
    assert req["stop"] == ["<|im_end|>"]
    assert "Why is the sky blue?" in str(req["prompt"])
    answer = json.loads(t.output)["answer"]
    assert answer.startswith("[smollm2-135m-instruct]")


def test_chat_without_question_is_a_tenant_error(tenant: Callable[..., Tenant]) -> None:
    t = tenant("chat", "{}")
    assert t.run() == 1
    assert t.output == ""
    assert t.host.logs == [(3, 'input needs a "question"')]


def test_chain_uses_both_models(tenant: Callable[..., Tenant]) -> None:
    t = tenant("chain", json.dumps({"question": "What is WebAssembly?"}))
    assert t.run() == 0
    assert [r["model"] for r in t.host.requests] == list(ALLOWED_MODELS)
    out = json.loads(t.output)
    assert out["answer"].startswith("[gemma-3-270m]")
    assert out["models"] == {m: f"{m}@fake-1" for m in ALLOWED_MODELS}


def test_stream_output_arrives_before_the_summary(tenant: Callable[..., Tenant]) -> None:
    t = tenant("stream", json.dumps({"prompt": "Once upon a time"}))
    assert t.run() == 0
    assert t.host.output[:2] == ["[smollm2-135m-instruct]", " 16 chars"]
    assert t.host.output[2] == "\n[stop: 4 prompt + 2 completion tokens]\n"


def test_tokens_round_trip(tenant: Callable[..., Tenant]) -> None:
    t = tenant("tokens", json.dumps({"text": "héllo ✓"}))
    assert t.run() == 0
    out = json.loads(t.output)
    assert out["tokens"] == [ord(c) for c in "héllo ✓"]
    assert out["text"] == "héllo ✓"
    assert out["model"]["context_length"] == 2048


def test_badptr_gets_out_of_bounds(tenant: Callable[..., Tenant]) -> None:
    t = tenant("badptr", '{"any": "input"}')
    assert t.run() == 0
    codes = json.loads(t.output)
    assert codes.keys() == {"emit", "emit_wrap", "log", "generate", "encode", "decode", "result_read"}
    assert set(codes.values()) == {-ErrorCode.OUT_OF_BOUNDS}, codes


def test_panic_fails_after_the_first_chunk(tenant: Callable[..., Tenant]) -> None:
    t = tenant("panic", "{}")
    assert t.run() == 2  # realm.ExitPanic: the SDK recovered
    assert t.output == "first chunk\n"
    [(level, msg)] = t.host.logs
    assert level == 3 and msg.startswith("panic: assignment to entry in nil map")


def test_unrecoverable_go_crash_exits(tenant: Callable[..., Tenant]) -> None:
    t = tenant("panic", '{"fatal": true}')
    # The Go runtime prints "fatal error: ..." to stderr and aborts with `unreachable`.
    with pytest.raises(wasmtime.Trap) as exc:
        t.run()
    assert exc.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    assert t.output == "first chunk\n"
    assert "fatal error" in t.stderr.read_text()


def test_spin_is_interrupted_by_the_epoch_deadline(
    engine: wasmtime.Engine, tenant: Callable[..., Tenant]
) -> None:
    t = tenant("spin")
    t.store.set_epoch_deadline(1)
    ticker = threading.Timer(0.2, engine.increment_epoch)
    ticker.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(wasmtime.Trap) as exc:
            t.run()
    finally:
        ticker.cancel()
    assert exc.value.trap_code == wasmtime.TrapCode.INTERRUPT
    assert time.perf_counter() - t0 < 5


def test_oom_hits_the_memory_limit(tenant: Callable[..., Tenant]) -> None:
    t = tenant("oom", memory_limit=MEMORY_LIMIT)
    # memory.grow fails at the limit; the Go runtime prints "fatal error: out of memory" and
    # aborts with `unreachable`: a trap like any other, told apart only by the memory's size.
    with pytest.raises(wasmtime.Trap) as exc:
        t.run()
    assert exc.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    mem = t.instance.exports(t.store)["memory"]
    assert isinstance(mem, wasmtime.Memory)
    assert mem.data_len(t.store) <= MEMORY_LIMIT
    assert "out of memory" in t.stderr.read_text()
    print(f"\noom: trapped with memory at {mem.data_len(t.store) >> 20} MiB of {MEMORY_LIMIT >> 20} MiB")

"""The `realm` import module for core WebAssembly modules: pointer/length pairs and JSON payloads.

The host functions are defined once per `wasmtime.Linker` and find their invocation through
`context.current()`; every one of them delegates to the `InvocationContext` method of the same
meaning, so core modules and components are served by one implementation.

Rules every function keeps (docs/abi.md):
- the guest owns all of its memory; the host only reads the ranges the guest names and writes
  into the buffer the guest passes to `realm_result_read`;
- each pointer/length pair is checked against the memory's current size before it is touched
  (out-of-bounds), lengths are capped at MAX_PAYLOAD_BYTES (too-large);
- no Python exception ever reaches wasmtime: wasmtime-py keeps the exception of a failed host
  callback in a process-wide global, which concurrent Stores on other threads could pick up.

WASI's `poll_oneoff` (every sleep: Go's `time.Sleep`, libc's `nanosleep`) and the clock it reads
are shadowed here by host functions that sleep on the run's `Deadline` (context.py): WASI's own
would block the worker thread in native code, where no epoch deadline reaches.
"""

from __future__ import annotations

import array
import ctypes
import logging
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pydantic
import wasmtime

from . import context
from .abi import (
    CORE_IMPORT_MODULE,
    MAX_PAYLOAD_BYTES,
    AddTextsPayload,
    CollectionCreatePayload,
    CollectionInfoPayload,
    ConversationCreate,
    ConversationPut,
    EmbedPayload,
    ErrorCode,
    GenerateParams,
    GenerateWith,
    HitPayload,
    HostError,
    HttpRequestPayload,
    LogLevel,
    Payload,
    PipelineRunRequest,
    SamplerDecisions,
    SearchPayload,
    ToolCallPayload,
    ToolInfoPayload,
)
from .context import InvocationContext

log = logging.getLogger(__name__)

I32 = "i32"
I64 = "i64"
WASI_MODULE = "wasi_snapshot_preview1"

# name -> (params, results): the core ABI 1.x. Must stay in step with docs/abi.md. A module may
# import any of them whatever minor it declares: what a host lacks fails the deploy by name.
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "realm_host_generate": ((I32, I32), (I64,)),
    "realm_host_generate_stream": ((I32, I32), (I64,)),
    "realm_encode_tokens": ((I32, I32, I32, I32), (I64,)),
    "realm_decode_tokens": ((I32, I32, I32, I32), (I64,)),
    "realm_host_load_model_by_name": ((I32, I32), (I64,)),
    "realm_get_model_version": ((I32, I32), (I64,)),
    "realm_input": ((), (I64,)),
    "realm_emit": ((I32, I32), (I32,)),
    "realm_log": ((I32, I32, I32), (I32,)),
    "realm_result_read": ((I32, I32), (I32,)),
    # 1.1: conversations
    "realm_conversation_create": ((I32, I32), (I64,)),
    "realm_conversation_get": ((I32, I32), (I64,)),
    "realm_conversation_put": ((I32, I32), (I64,)),
    "realm_conversation_delete": ((I32, I32), (I32,)),
    # 1.2: sampling
    "realm_generate_with": ((I32, I32), (I64,)),
    "realm_sampler_decide": ((I32, I32), (I32,)),
    # 1.3: tools
    "realm_http_fetch": ((I32, I32), (I64,)),
    "realm_mcp_list_tools": ((I32, I32), (I64,)),
    "realm_mcp_call_tool": ((I32, I32), (I64,)),
    # 1.4: retrieval
    "realm_embed": ((I32, I32), (I64,)),
    "realm_collection_create": ((I32, I32), (I64,)),
    "realm_collection_list": ((), (I64,)),
    "realm_collection_delete": ((I32, I32), (I32,)),
    "realm_collection_add_texts": ((I32, I32), (I64,)),
    "realm_collection_search": ((I32, I32), (I64,)),
    # 1.5: pipelines
    "realm_pipeline_run": ((I32, I32), (I64,)),
}
# The optional export of a module with its own sampler (1.2): `(in_len) -> status`.
SAMPLER_STEP_SIGNATURE: tuple[tuple[str, ...], tuple[str, ...]] = ((I32,), (I32,))

_U32 = 0xFFFFFFFF


# ---- per-invocation state ---------------------------------------------------------------------

_state = threading.local()


@contextmanager
def invocation(ctx: InvocationContext) -> Iterator[InvocationContext]:
    """Bind `ctx` to this thread for one core-module run, with an empty pending result.

    The pending result belongs to the invocation, not to the thread: it is reset on entry and
    the previous one restored on exit, so nothing leaks from one tenant's run to the next.
    """
    previous = getattr(_state, "pending", None)
    _state.pending = None
    try:
        with context.bound(ctx):
            yield ctx
    finally:
        _state.pending = previous


def set_pending(data: bytes | None) -> None:
    """Make `data` the pending result (the sampler's step input, before realm_sampler_step)."""
    _state.pending = data


def _set_pending(data: bytes | None) -> None:
    _state.pending = data


def _get_pending() -> bytes | None:
    pending: bytes | None = getattr(_state, "pending", None)
    return pending


# ---- guest memory -----------------------------------------------------------------------------


def _memory(caller: wasmtime.Caller) -> tuple[int, int]:
    """(base address, size in bytes) of the caller's exported memory, read fresh on every call
    because memory.grow may move it."""
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        raise HostError(ErrorCode.UNSUPPORTED, "the module exports no memory")
    size = mem.data_len(caller)
    base = ctypes.cast(mem.data_ptr(caller), ctypes.c_void_p).value or 0
    return base, size


def _check(size: int, ptr: int, length: int) -> tuple[int, int]:
    # i32 arguments arrive signed; the guest means them unsigned.
    ptr &= _U32
    length &= _U32
    if ptr + length > size:
        raise HostError(ErrorCode.OUT_OF_BOUNDS, f"[{ptr}, {ptr + length}) is outside memory of {size} bytes")
    return ptr, length


def read_bytes(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
    if length & _U32 > MAX_PAYLOAD_BYTES:
        raise HostError(ErrorCode.TOO_LARGE, f"{length & _U32} bytes exceed the {MAX_PAYLOAD_BYTES} limit")
    base, size = _memory(caller)
    ptr, length = _check(size, ptr, length)
    if length == 0:
        return b""
    return ctypes.string_at(base + ptr, length)


def read_text(caller: wasmtime.Caller, ptr: int, length: int) -> str:
    data = read_bytes(caller, ptr, length)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HostError(ErrorCode.INVALID_UTF8, f"invalid UTF-8 at byte {e.start}") from None


def _result(data: bytes) -> int:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise HostError(ErrorCode.TOO_LARGE, f"the result of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    _set_pending(data)
    return len(data)


# ---- the functions ----------------------------------------------------------------------------


P = TypeVar("P", bound=Payload)


def read_payload(caller: wasmtime.Caller, ptr: int, length: int, model: type[P]) -> P:
    body = read_text(caller, ptr, length)
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as e:
        raise HostError(ErrorCode.INVALID_ARGUMENT, _short(e)) from None


def _host_generate(stream: bool) -> Callable[..., int]:
    def host_generate(caller: wasmtime.Caller, req_ptr: int, req_len: int) -> int:
        params = read_payload(caller, req_ptr, req_len, GenerateParams)
        return _result(context.current().host_generate(params, stream=stream).model_dump_json().encode())

    return host_generate


def _generate_with(caller: wasmtime.Caller, req_ptr: int, req_len: int) -> int:
    req = read_payload(caller, req_ptr, req_len, GenerateWith)
    return _result(context.current().generate_with(req.params, req.options).model_dump_json().encode())


def _sampler_decide(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    context.current().sampler_decide(read_payload(caller, ptr, length, SamplerDecisions))
    return 0


def _encode_tokens(caller: wasmtime.Caller, m_ptr: int, m_len: int, t_ptr: int, t_len: int) -> int:
    model = read_text(caller, m_ptr, m_len)
    text = read_text(caller, t_ptr, t_len)
    tokens = context.current().encode_tokens(model, text)
    try:
        packed = array.array("I", tokens)
    except OverflowError:
        raise HostError(ErrorCode.ENGINE_ERROR, "the tokenizer returned an id outside u32") from None
    if sys.byteorder == "big":
        packed.byteswap()
    return _result(packed.tobytes())


def _decode_tokens(caller: wasmtime.Caller, m_ptr: int, m_len: int, t_ptr: int, n_tokens: int) -> int:
    model = read_text(caller, m_ptr, m_len)
    n = n_tokens & _U32
    if n * 4 > MAX_PAYLOAD_BYTES:
        raise HostError(ErrorCode.TOO_LARGE, f"{n} tokens exceed the {MAX_PAYLOAD_BYTES}-byte limit")
    tokens = array.array("I")
    tokens.frombytes(read_bytes(caller, t_ptr, n * 4))
    if sys.byteorder == "big":
        tokens.byteswap()
    return _result(context.current().decode_tokens(model, tokens.tolist()).encode())


def _load_model_by_name(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    info = context.current().load_model_by_name(read_text(caller, ptr, length))
    return _result(info.model_dump_json().encode())


def _get_model_version(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    return _result(context.current().get_model_version(read_text(caller, ptr, length)).encode())


def _input(caller: wasmtime.Caller) -> int:
    return _result(context.current().input().encode())


def _emit(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    context.current().emit(read_text(caller, ptr, length))
    return 0


def _log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> int:
    try:
        lvl = LogLevel(level)
    except ValueError:
        raise HostError(ErrorCode.INVALID_ARGUMENT, f"unknown log level {level}") from None
    context.current().log(lvl, read_text(caller, ptr, length))
    return 0


def _conversation_create(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, ConversationCreate)
    return _result(context.current().conversation_create(params).model_dump_json().encode())


def _conversation_get(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    conversation = context.current().conversation_get(read_text(caller, ptr, length))
    return _result(conversation.model_dump_json().encode())


def _conversation_put(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, ConversationPut)
    return _result(context.current().conversation_put(params).model_dump_json().encode())


def _conversation_delete(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    context.current().conversation_delete(read_text(caller, ptr, length))
    return 0


def _http_fetch(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    request = read_payload(caller, ptr, length, HttpRequestPayload)
    return _result(context.current().http_fetch(request).model_dump_json().encode())


_TOOL_LIST: pydantic.TypeAdapter[list[ToolInfoPayload]] = pydantic.TypeAdapter(list[ToolInfoPayload])


def _mcp_list_tools(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    tools = context.current().mcp_list_tools(read_text(caller, ptr, length))
    return _result(_TOOL_LIST.dump_json(tools))


def _mcp_call_tool(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    call = read_payload(caller, ptr, length, ToolCallPayload)
    return _result(context.current().mcp_call_tool(call).model_dump_json().encode())


_COLLECTIONS: pydantic.TypeAdapter[list[CollectionInfoPayload]] = pydantic.TypeAdapter(
    list[CollectionInfoPayload]
)
_HITS: pydantic.TypeAdapter[list[HitPayload]] = pydantic.TypeAdapter(list[HitPayload])
_IDS: pydantic.TypeAdapter[list[str]] = pydantic.TypeAdapter(list[str])


def _embed(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, EmbedPayload)
    return _result(context.current().embed(params).model_dump_json().encode())


def _collection_create(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, CollectionCreatePayload)
    return _result(context.current().collection_create(params).model_dump_json().encode())


def _collection_list(caller: wasmtime.Caller) -> int:
    return _result(_COLLECTIONS.dump_json(context.current().collection_list()))


def _collection_delete(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    context.current().collection_delete(read_text(caller, ptr, length))
    return 0


def _collection_add_texts(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, AddTextsPayload)
    return _result(_IDS.dump_json(context.current().collection_add_texts(params)))


def _collection_search(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, SearchPayload)
    return _result(_HITS.dump_json(context.current().collection_search(params)))


def _pipeline_run(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    params = read_payload(caller, ptr, length, PipelineRunRequest)
    return _result(context.current().run_pipeline(params).model_dump_json().encode())


def _result_read(caller: wasmtime.Caller, dst_ptr: int, dst_len: int) -> int:
    base, size = _memory(caller)
    dst, cap = _check(size, dst_ptr, dst_len)
    pending = _get_pending()
    if pending is None:
        raise HostError(ErrorCode.NO_RESULT, "no result is pending")
    if cap < len(pending):
        raise HostError(ErrorCode.BUFFER_TOO_SMALL, f"the result needs {len(pending)} bytes")
    ctypes.memmove(base + dst, pending, len(pending))
    _set_pending(None)
    return len(pending)


def _short(e: pydantic.ValidationError) -> str:
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": str(e)}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')}"[:500] if where else str(first.get("msg", ""))[:500]


_IMPLS: dict[str, Callable[..., int]] = {
    "realm_host_generate": _host_generate(stream=False),
    "realm_host_generate_stream": _host_generate(stream=True),
    "realm_encode_tokens": _encode_tokens,
    "realm_decode_tokens": _decode_tokens,
    "realm_host_load_model_by_name": _load_model_by_name,
    "realm_get_model_version": _get_model_version,
    "realm_input": _input,
    "realm_emit": _emit,
    "realm_log": _log,
    "realm_result_read": _result_read,
    "realm_conversation_create": _conversation_create,
    "realm_conversation_get": _conversation_get,
    "realm_conversation_put": _conversation_put,
    "realm_conversation_delete": _conversation_delete,
    "realm_generate_with": _generate_with,
    "realm_sampler_decide": _sampler_decide,
    "realm_http_fetch": _http_fetch,
    "realm_mcp_list_tools": _mcp_list_tools,
    "realm_mcp_call_tool": _mcp_call_tool,
    "realm_embed": _embed,
    "realm_collection_create": _collection_create,
    "realm_collection_list": _collection_list,
    "realm_collection_delete": _collection_delete,
    "realm_collection_add_texts": _collection_add_texts,
    "realm_collection_search": _collection_search,
    "realm_pipeline_run": _pipeline_run,
}


# ---- WASI preview 1: sleeping and the clocks it is measured by ---------------------------------
#
# Layouts and codes from the preview 1 witx: a subscription is 48 bytes (userdata u64, tag u8,
# then at 16 either a clock {id u32, timeout u64 at 24, precision u64 at 32, flags u16 at 40}
# or an fd u32); an event is 32 bytes (userdata u64, error u16 at 8, type u8 at 10, nbytes u64
# at 16, flags u16 at 24).

SUBSCRIPTION_SIZE = 48
EVENT_SIZE = 32
EVENTTYPE_CLOCK = 0
EVENTTYPE_FD_READ = 1
EVENTTYPE_FD_WRITE = 2
SUBCLOCKFLAG_ABSTIME = 1
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_FAULT = 21
ERRNO_INVAL = 28
# The only descriptors a guest has: stdin (empty) and stdout/stderr (discarded), never blocking.
STDIO_FDS = (0, 1, 2)


def _clock_now_ns(clock_id: int) -> int | None:
    if clock_id == CLOCK_REALTIME:
        return time.time_ns()
    if clock_id == CLOCK_MONOTONIC:
        # Like WASI's own, from the start of the run: the host's uptime is none of the guest's.
        deadline = context.current_deadline()
        return time.monotonic_ns() - (deadline.started_ns if deadline is not None else 0)
    return None


def _clock_time_get(caller: wasmtime.Caller, clock_id: int, _precision: int, out_ptr: int) -> int:
    now = _clock_now_ns(clock_id)
    if now is None:
        return ERRNO_BADF  # the CPU-time clocks, as WASI's own answers
    base, size = _memory(caller)
    ptr, _ = _check(size, out_ptr, 8)
    ctypes.memmove(base + ptr, struct.pack("<Q", now), 8)
    return ERRNO_SUCCESS


def _poll_oneoff(caller: wasmtime.Caller, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
    """Descriptors are always ready (STDIO_FDS); clocks sleep on the run's deadline, which may
    cut the sleep short and end the run (the guest traps once this call returns)."""
    n = nsubs & _U32
    if n == 0:
        return ERRNO_INVAL
    base, size = _memory(caller)
    src, _ = _check(size, in_ptr, n * SUBSCRIPTION_SIZE)
    _check(size, out_ptr, n * EVENT_SIZE)
    _check(size, nevents_ptr, 4)
    raw = ctypes.string_at(base + src, n * SUBSCRIPTION_SIZE)
    ready: list[tuple[int, int, int]] = []  # (userdata, errno, event type)
    clocks: list[tuple[int, int]] = []  # (userdata, ns from now)
    for i in range(n):
        at = i * SUBSCRIPTION_SIZE
        userdata, tag = struct.unpack_from("<QB", raw, at)
        if tag == EVENTTYPE_CLOCK:
            (clock_id,) = struct.unpack_from("<I", raw, at + 16)
            timeout, _precision, flags = struct.unpack_from("<QQH", raw, at + 24)
            now = _clock_now_ns(clock_id)
            if now is None:
                ready.append((userdata, ERRNO_INVAL, EVENTTYPE_CLOCK))
            else:
                clocks.append((userdata, timeout - now if flags & SUBCLOCKFLAG_ABSTIME else timeout))
        elif tag in (EVENTTYPE_FD_READ, EVENTTYPE_FD_WRITE):
            (fd,) = struct.unpack_from("<I", raw, at + 16)
            ready.append((userdata, ERRNO_SUCCESS if fd in STDIO_FDS else ERRNO_BADF, tag))
        else:
            return ERRNO_INVAL
    if not ready and clocks:
        first = min(ns for _, ns in clocks)
        deadline = context.current_deadline()
        if first > 0 and deadline is not None:
            deadline.sleep(first / 1e9)
        elif first > 0:  # no run is bound: nothing may block
            first = 0
        ready = [(u, ERRNO_SUCCESS, EVENTTYPE_CLOCK) for u, ns in clocks if ns <= first]
    else:
        ready += [(u, ERRNO_SUCCESS, EVENTTYPE_CLOCK) for u, ns in clocks if ns <= 0]
    base, _ = _memory(caller)  # the guest did not run meanwhile; read again all the same
    events = b"".join(struct.pack("<QHBxxxxxQH6x", u, errno, kind, 0, 0) for u, errno, kind in ready)
    ctypes.memmove(base + (out_ptr & _U32), events, len(events))
    ctypes.memmove(base + (nevents_ptr & _U32), struct.pack("<I", len(ready)), 4)
    return ERRNO_SUCCESS


def _sched_yield() -> int:
    # A guest that spins on yield meets its epoch deadline anyway; this one also lets a closing
    # sandbox end it between two yields.
    deadline = context.current_deadline()
    if deadline is not None and deadline.remaining() <= 0:
        deadline.expire()
    return ERRNO_SUCCESS


def _wasi_guard(name: str, impl: Callable[..., int]) -> Callable[..., int]:
    """Like `_guard`, in WASI's terms: a bad pointer is EFAULT, anything else EINVAL."""

    def call(*args: Any) -> int:
        try:
            return impl(*args)
        except HostError:
            return ERRNO_FAULT
        except Exception:
            log.exception("WASI function %s failed", name)
            return ERRNO_INVAL

    call.__name__ = name
    return call


def _guard(name: str, impl: Callable[..., int], produces_result: bool) -> Callable[..., int]:
    """Turn every failure into `-code`: the guest decides what to do, the host never traps it.

    Functions that produce a result drop the previous pending result first; when they fail the
    error message becomes the pending result, so a guest can read why (docs/abi.md).
    """

    def call(caller: wasmtime.Caller, *args: Any) -> int:
        if produces_result:
            _set_pending(None)
        try:
            return impl(caller, *args)
        except HostError as e:
            if produces_result:
                _set_pending(e.message.encode("utf-8", "replace")[:MAX_PAYLOAD_BYTES])
            return -int(e.code)
        except Exception:
            log.exception("host function %s failed", name)
            return -int(ErrorCode.ENGINE_ERROR)

    call.__name__ = name
    return call


def _valtype(name: str) -> wasmtime.ValType:
    return wasmtime.ValType.i64() if name == I64 else wasmtime.ValType.i32()


def shadow_wasi_time(linker: wasmtime.Linker) -> None:
    """Replace WASI's `poll_oneoff`, `clock_time_get` and `sched_yield` on `linker` (after
    `define_wasi`) with the deadline-bound ones above."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    linker.allow_shadowing = True
    try:
        linker.define_func(
            WASI_MODULE,
            "poll_oneoff",
            wasmtime.FuncType([i32, i32, i32, i32], [i32]),
            _wasi_guard("poll_oneoff", _poll_oneoff),
            access_caller=True,
        )
        linker.define_func(
            WASI_MODULE,
            "clock_time_get",
            wasmtime.FuncType([i32, i64, i32], [i32]),
            _wasi_guard("clock_time_get", _clock_time_get),
            access_caller=True,
        )
        linker.define_func(
            WASI_MODULE, "sched_yield", wasmtime.FuncType([], [i32]), _wasi_guard("sched_yield", _sched_yield)
        )
    finally:
        linker.allow_shadowing = False


def define_realm(linker: wasmtime.Linker) -> None:
    """Define the `realm` import module on `linker` (once: the functions are invocation-free)."""
    for name, (params, results) in SIGNATURES.items():
        ty = wasmtime.FuncType([_valtype(p) for p in params], [_valtype(r) for r in results])
        produces_result = results == (I64,)
        linker.define_func(
            CORE_IMPORT_MODULE, name, ty, _guard(name, _IMPLS[name], produces_result), access_caller=True
        )

"""The one implementation of the host functions, whatever the binding.

An `InvocationContext` lives for one invocation and runs on that invocation's worker thread
(wasmtime Stores are not thread-safe: one Store per invocation, one thread per Store). Calls
that need the runtime (generate, tokenize, model info, conversations) go to `HostServices` on
the event loop with `run_coroutine_threadsafe(...).result()`: the worker thread waits without
the GIL, and other tenants and the engine keep running.

The sandbox knows only the ABI: it defines `HostServices`, which the serving layer implements
(runtime/serving/invocations.py) with the same admission and quotas as the HTTP API, and maps
what those services refuse (any exception with a `reason`, see `ServiceRefusal`) to ABI codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, runtime_checkable

from .abi import (
    ConversationCreate,
    ConversationPayload,
    ConversationPut,
    ErrorCode,
    GenerateParams,
    GenerationPayload,
    HostError,
    LogLevel,
    ModelInfoPayload,
)

T = TypeVar("T")
log = logging.getLogger("realm.tenant")


@runtime_checkable
class ServiceRefusal(Protocol):
    """What a HostServices call raises when it refuses a call: the serving layer's domain errors
    (runtime/serving/errors.py) and the conversation store's all carry a machine-readable
    `reason`, which `ABI_CODE_BY_REASON` turns into the code the guest sees."""

    reason: str
    message: str


# A reason not listed (e.g. the runtime is draining) is the host's failure, not the call's.
ABI_CODE_BY_REASON: dict[str, ErrorCode] = {
    "invalid_request": ErrorCode.INVALID_ARGUMENT,
    "model_not_allowed": ErrorCode.MODEL_NOT_ALLOWED,
    "model_not_found": ErrorCode.MODEL_NOT_FOUND,
    "quota_exceeded": ErrorCode.QUOTA_EXCEEDED,
    "conversation_not_found": ErrorCode.NOT_FOUND,
    "conversation_conflict": ErrorCode.CONFLICT,
    "conversation_too_large": ErrorCode.TOO_LARGE,
    "conversation_store_unavailable": ErrorCode.UNAVAILABLE,
    "conversation_failed": ErrorCode.UNAVAILABLE,
    "conversations_disabled": ErrorCode.UNAVAILABLE,
}


def host_error(refusal: ServiceRefusal) -> HostError:
    return HostError(ABI_CODE_BY_REASON.get(refusal.reason, ErrorCode.ENGINE_ERROR), refusal.message)


class HostServices(Protocol):
    """What the runtime offers a tenant's module. Raise HostError, or a ServiceRefusal, for the
    guest to see; anything else is logged and reported as ENGINE_ERROR."""

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        """Generate a whole text; with `on_text`, each piece is passed to it (on the event loop)
        as it is generated."""
        ...

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]: ...

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str: ...

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload: ...

    # Since ABI 1.1. `tenant` is always the invocation's own: a guest cannot name another one.
    async def conversation_create(self, tenant: str, params: ConversationCreate) -> ConversationPayload: ...

    async def conversation_get(self, tenant: str, conversation_id: str) -> ConversationPayload: ...

    async def conversation_put(self, tenant: str, params: ConversationPut) -> ConversationPayload: ...

    async def conversation_delete(self, tenant: str, conversation_id: str) -> None: ...


class InvocationContext:
    def __init__(
        self,
        *,
        tenant: str,
        input_data: str,
        services: HostServices,
        loop: asyncio.AbstractEventLoop,
        on_output: Callable[[str], None],
        host_call_timeout_s: float = 600.0,
    ) -> None:
        self.tenant = tenant
        self.input_data = input_data
        self._services = services
        self._loop = loop
        self._on_output = on_output  # called on the worker thread, from `emit`
        self._timeout = host_call_timeout_s
        self.host_calls: Counter[str] = Counter()
        self.output: list[str] = []
        self.last_error_log: str | None = None

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._result(asyncio.run_coroutine_threadsafe(coro, self._loop), self._timeout)

    def _result(self, fut: concurrent.futures.Future[T], timeout: float) -> T:
        try:
            return fut.result(timeout)
        except HostError:
            raise
        except TimeoutError as e:
            fut.cancel()
            raise HostError(ErrorCode.ENGINE_ERROR, "the host call timed out") from e
        except Exception as e:
            if isinstance(e, ServiceRefusal):
                raise host_error(e) from e
            log.exception("host call failed for tenant %s", self.tenant)
            raise HostError(ErrorCode.ENGINE_ERROR, f"{type(e).__name__}: {e}") from e

    # ---- the ABI, once ---------------------------------------------------------------------

    def host_generate(self, params: GenerateParams, *, stream: bool) -> GenerationPayload:
        """The ABI's generate and generate-stream: a streamed generation emits its text as it comes."""
        self.host_calls["generate_stream" if stream else "generate"] += 1
        if not stream:
            return self._wait(self._services.generate_text(self.tenant, params, None))
        # The text arrives on the event loop; it is emitted here, on this worker thread, like
        # every emit: the invocation's output and counters have one thread.
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        fut = asyncio.run_coroutine_threadsafe(
            self._services.generate_text(self.tenant, params, pieces.put), self._loop
        )
        fut.add_done_callback(lambda _: pieces.put(None))  # after the last piece
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                piece = pieces.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break  # timed out: _result says so
            if piece is None:
                break
            self.emit(piece)
        return self._result(fut, max(0.0, deadline - time.monotonic()))

    def encode_tokens(self, model: str, text: str) -> list[int]:
        self.host_calls["encode_tokens"] += 1
        return self._wait(self._services.encode_tokens(self.tenant, model, text))

    def decode_tokens(self, model: str, tokens: Sequence[int]) -> str:
        self.host_calls["decode_tokens"] += 1
        return self._wait(self._services.decode_tokens(self.tenant, model, tokens))

    def load_model_by_name(self, name: str) -> ModelInfoPayload:
        self.host_calls["load_model_by_name"] += 1
        return self._wait(self._services.model_info(self.tenant, name))

    def get_model_version(self, name: str) -> str:
        self.host_calls["get_model_version"] += 1
        return self._wait(self._services.model_info(self.tenant, name)).version

    def conversation_create(self, params: ConversationCreate) -> ConversationPayload:
        self.host_calls["conversation_create"] += 1
        return self._wait(self._services.conversation_create(self.tenant, params))

    def conversation_get(self, conversation_id: str) -> ConversationPayload:
        self.host_calls["conversation_get"] += 1
        return self._wait(self._services.conversation_get(self.tenant, conversation_id))

    def conversation_put(self, params: ConversationPut) -> ConversationPayload:
        self.host_calls["conversation_put"] += 1
        return self._wait(self._services.conversation_put(self.tenant, params))

    def conversation_delete(self, conversation_id: str) -> None:
        self.host_calls["conversation_delete"] += 1
        self._wait(self._services.conversation_delete(self.tenant, conversation_id))

    def input(self) -> str:
        self.host_calls["input"] += 1
        return self.input_data

    def emit(self, chunk: str) -> None:
        """Runs on the invocation's worker thread only: the guest's own emits and a streamed
        generate's text alike (`host_generate` hands the latter over from the event loop)."""
        self.host_calls["emit"] += 1
        self.output.append(chunk)
        self._on_output(chunk)

    def log(self, level: LogLevel, message: str) -> None:
        self.host_calls["log"] += 1
        if level >= LogLevel.ERROR:
            self.last_error_log = message
        log.log(
            {LogLevel.DEBUG: 10, LogLevel.INFO: 20, LogLevel.WARN: 30, LogLevel.ERROR: 40}.get(level, 20),
            "tenant %s: %s",
            self.tenant,
            message[:2000],
        )


_local = threading.local()


@contextmanager
def bound(ctx: InvocationContext) -> Iterator[InvocationContext]:
    """Make `ctx` the current invocation of this worker thread while the guest runs.

    Host functions are defined once per Linker (defining them per invocation would cost more
    than the instantiation itself); they find their invocation here. One Store runs on one
    thread at a time, so a thread-local is exactly the invocation's scope.
    """
    previous = getattr(_local, "ctx", None)
    _local.ctx = ctx
    try:
        yield ctx
    finally:
        _local.ctx = previous


def current() -> InvocationContext:
    ctx: InvocationContext | None = getattr(_local, "ctx", None)
    if ctx is None:
        raise HostError(ErrorCode.UNSUPPORTED, "host function called outside an invocation")
    return ctx

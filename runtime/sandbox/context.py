"""The one implementation of the host functions, whatever the binding.

An `InvocationContext` lives for one invocation and runs on that invocation's worker thread
(wasmtime Stores are not thread-safe: one Store per invocation, one thread per Store). Calls
that need the runtime (generate, tokenize, model info) go to `HostServices` on the event loop
with `run_coroutine_threadsafe(...).result()`: the worker thread waits without the GIL, and
other tenants and the engine keep running.

The sandbox knows only the ABI: `HostServices` is implemented by the runtime
(runtime/api/invoke.py), which applies the same admission and quotas as the HTTP API.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from .abi import (
    ConversationCreate,
    ConversationPayload,
    ConversationPut,
    ErrorCode,
    GenerateParams,
    Generation,
    HostError,
    LogLevel,
    ModelInfoPayload,
)

T = TypeVar("T")
log = logging.getLogger("realm.tenant")


class HostServices(Protocol):
    """What the runtime offers a tenant's module. Raise HostError for the guest to see."""

    async def generate(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> Generation: ...

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
        self._on_output = on_output  # called on the worker thread; must be thread-safe
        self._timeout = host_call_timeout_s
        self.host_calls: Counter[str] = Counter()
        self.output: list[str] = []
        self.last_error_log: str | None = None

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self._timeout)
        except HostError:
            raise
        except TimeoutError as e:
            fut.cancel()
            raise HostError(ErrorCode.ENGINE_ERROR, "the host call timed out") from e
        except Exception as e:
            log.exception("host call failed for tenant %s", self.tenant)
            raise HostError(ErrorCode.ENGINE_ERROR, f"{type(e).__name__}: {e}") from e

    # ---- the ABI, once ---------------------------------------------------------------------

    def generate(self, params: GenerateParams, *, stream: bool) -> Generation:
        self.host_calls["generate_stream" if stream else "generate"] += 1
        return self._wait(self._services.generate(self.tenant, params, self.emit if stream else None))

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

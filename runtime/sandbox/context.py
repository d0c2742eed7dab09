"""The one implementation of the host functions, whatever the binding.

An `InvocationContext` lives for one invocation and runs on that invocation's worker thread
(wasmtime Stores are not thread-safe: one Store per invocation, one thread per Store). Calls
that need the runtime (generate, tokenize, model info, conversations) go to `HostServices` on
the event loop with `run_coroutine_threadsafe(...).result()`: the worker thread waits without
the GIL, and other tenants and the engine keep running.

Time: epoch interruption stops WebAssembly, not host code, so every wait a run causes on the host
(a WASI sleep, a host call's answer, back-pressure on its output) is bounded here by the run's
`Deadline`: it ends at the deadline, or at once when the sandbox closes, and then interrupts the
guest so that the run ends as `wasm_timeout` and its worker thread is free.

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
    MAX_PAYLOAD_BYTES,
    AddTextsPayload,
    CollectionCreatePayload,
    CollectionInfoPayload,
    ConversationCreate,
    ConversationPayload,
    ConversationPut,
    EmbeddingsPayload,
    EmbedPayload,
    ErrorCode,
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    GenerationPayload,
    HitPayload,
    HostError,
    HttpRequestPayload,
    HttpResponsePayload,
    InvocationErrorCode,
    LogLevel,
    ModelInfoPayload,
    PipelineRunPayload,
    PipelineRunRequest,
    SamplerDecisions,
    SearchPayload,
    ToolCallPayload,
    ToolInfoPayload,
    ToolResultPayload,
)

T = TypeVar("T")
log = logging.getLogger("realm.tenant")

# A wait on a future cannot also wait on the sandbox's closing event: it wakes this often to look.
WAIT_SLICE_S = 0.05
DEFAULT_MAX_OUTPUT_BYTES = 16 * MAX_PAYLOAD_BYTES

# What `on_output` may return: a future the emitting thread waits for (bounded by the deadline),
# so that a consumer slower than the guest holds the guest back instead of queueing without end.
OutputSink = Callable[[str], "concurrent.futures.Future[Any] | None"]


class Deadline:
    """When one run (an invocation, or a module's load check) must end, on its worker thread.

    `closing` is the sandbox's: once set, nothing waits any more. `interrupt` makes the guest trap
    as soon as the host call returns: a wait that ends because time is up ends the run, not just
    the wait.
    """

    def __init__(
        self, seconds: float, closing: threading.Event, interrupt: Callable[[], None] | None = None
    ) -> None:
        self.started_ns = time.monotonic_ns()
        self.at = time.monotonic() + seconds
        self._closing = closing
        self._interrupt = interrupt
        # Why the host ended the run, when it did: the runner reports this, whatever the trap says.
        self.stopped: tuple[InvocationErrorCode, str] | None = None

    def remaining(self) -> float:
        if self._closing.is_set():
            return 0.0
        return max(0.0, self.at - time.monotonic())

    def stop(self, code: InvocationErrorCode, message: str) -> None:
        """End the run: the guest traps once back in WebAssembly and the run fails with `code`."""
        if self.stopped is None:
            self.stopped = (code, message)
        if self._interrupt is not None:
            self._interrupt()

    def release(self) -> None:
        """The run is over: nothing is left to interrupt (and the interrupt's Store is let go)."""
        self._interrupt = None

    def expire(self) -> None:
        closing = self._closing.is_set()
        self.stop(
            InvocationErrorCode.TIMEOUT,
            "the sandbox is shutting down" if closing else "the invocation passed its deadline",
        )

    def sleep(self, seconds: float) -> bool:
        """Sleep `seconds`, unless the deadline or the sandbox's closing comes first (then the run
        is expired). True when the whole sleep was had."""
        left = self.remaining()
        if seconds < left and not self._closing.wait(seconds):
            return True
        if seconds >= left:
            self._closing.wait(left)
        self.expire()
        return False

    def result(self, fut: concurrent.futures.Future[T], limit_s: float) -> T:
        """`fut`'s result, waited for at most `limit_s` and never past the deadline. Raises
        TimeoutError (the future cancelled) when either comes first; past the deadline the run
        is expired as well."""
        end = time.monotonic() + limit_s
        while True:
            left = min(self.remaining(), end - time.monotonic())
            if left <= 0:
                break
            try:
                return fut.result(min(left, WAIT_SLICE_S))
            except concurrent.futures.TimeoutError:
                continue
        fut.cancel()
        if self.remaining() <= 0:
            self.expire()
        raise TimeoutError


_deadline = threading.local()


@contextmanager
def deadline_bound(deadline: Deadline) -> Iterator[Deadline]:
    """Make `deadline` the one of whatever runs on this thread now (WASI's sleeps find it here)."""
    previous = getattr(_deadline, "current", None)
    _deadline.current = deadline
    try:
        yield deadline
    finally:
        _deadline.current = previous


def current_deadline() -> Deadline | None:
    found: Deadline | None = getattr(_deadline, "current", None)
    return found


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
    "invalid_constraint": ErrorCode.INVALID_CONSTRAINT,
    "sampler_timeout": ErrorCode.SAMPLER_TIMEOUT,
    "sampler_trap": ErrorCode.SAMPLER_TRAP,
    "sampler_invalid": ErrorCode.SAMPLER_INVALID,
    # 1.3: egress and tools (runtime/serving/egress.py, runtime/serving/mcp.py)
    "egress_denied": ErrorCode.DENIED,
    "egress_failed": ErrorCode.UNREACHABLE,
    "egress_limit": ErrorCode.LIMIT_EXCEEDED,
    "tool_not_found": ErrorCode.NOT_FOUND,
    "tool_failed": ErrorCode.TOOL_FAILED,
    # 1.4: retrieval (runtime/serving/embeddings.py, runtime/serving/vectors.py)
    "collection_not_found": ErrorCode.NOT_FOUND,
    "storage_quota_exceeded": ErrorCode.QUOTA_EXCEEDED,
    "store_failed": ErrorCode.UNAVAILABLE,
    # 1.5: pipelines (runtime/serving/pipelines.py)
    "pipeline_not_found": ErrorCode.NOT_FOUND,
    "deadline_exceeded": ErrorCode.TIMED_OUT,
}
# A failed outbound call that ran out of time is `timed-out`, not `unreachable` (its `code` says so).
ABI_CODE_BY_REASON_AND_CODE: dict[tuple[str, str], ErrorCode] = {
    ("egress_failed", "timeout"): ErrorCode.TIMED_OUT,
}


def host_error(refusal: ServiceRefusal) -> HostError:
    detail = getattr(refusal, "code", None)
    code = ABI_CODE_BY_REASON_AND_CODE.get((refusal.reason, detail)) if isinstance(detail, str) else None
    if code is None:
        code = ABI_CODE_BY_REASON.get(refusal.reason, ErrorCode.ENGINE_ERROR)
    return HostError(code, refusal.message)


class HostServices(Protocol):
    """What the runtime offers a tenant's module. Raise HostError, or a ServiceRefusal, for the
    guest to see; anything else is logged and reported as ENGINE_ERROR."""

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        """Generate a whole text; with `on_text`, each piece is passed to it (on the event loop)
        as it is generated."""
        ...

    # Since ABI 1.2.
    async def generate_with(
        self,
        tenant: str,
        params: GenerateParams,
        options: GenerateOptions,
        on_text: Callable[[str], None] | None,
    ) -> GenerationDetail:
        """`generate_text` with a constraint, logprobs or the module's own sampler; a generation
        its sampler failed raises a ServiceRefusal whose reason is the sampler's code."""
        ...

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]: ...

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str: ...

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload: ...

    # Since ABI 1.1. `tenant` is always the invocation's own: a guest cannot name another one.
    async def conversation_create(self, tenant: str, params: ConversationCreate) -> ConversationPayload: ...

    async def conversation_get(self, tenant: str, conversation_id: str) -> ConversationPayload: ...

    async def conversation_put(self, tenant: str, params: ConversationPut) -> ConversationPayload: ...

    async def conversation_delete(self, tenant: str, conversation_id: str) -> None: ...

    # Since ABI 1.3: reaching out under the tenant's egress allowlist; the services hold the
    # invocation's limits (calls, bytes, time), shared by all three.
    async def http_fetch(self, tenant: str, request: HttpRequestPayload) -> HttpResponsePayload: ...

    async def mcp_list_tools(self, tenant: str, server: str) -> list[ToolInfoPayload]:
        """Only the tools the tenant's spec (and the invocation's narrowing) allow on `server`."""
        ...

    async def mcp_call_tool(self, tenant: str, call: ToolCallPayload) -> ToolResultPayload: ...

    # Since ABI 1.4: embeddings and the tenant's own vector collections.
    async def embed(self, tenant: str, params: EmbedPayload) -> EmbeddingsPayload: ...

    async def collection_create(
        self, tenant: str, params: CollectionCreatePayload
    ) -> CollectionInfoPayload: ...

    async def collection_list(self, tenant: str) -> list[CollectionInfoPayload]: ...

    async def collection_delete(self, tenant: str, collection: str) -> None: ...

    async def collection_add_texts(self, tenant: str, params: AddTextsPayload) -> list[str]: ...

    async def collection_search(self, tenant: str, params: SearchPayload) -> list[HitPayload]: ...

    # Since ABI 1.5: the tenant's declared pipelines.
    async def run_pipeline(self, tenant: str, params: PipelineRunRequest) -> PipelineRunPayload: ...


class InvocationContext:
    def __init__(
        self,
        *,
        tenant: str,
        input_data: str,
        services: HostServices,
        loop: asyncio.AbstractEventLoop,
        on_output: OutputSink,
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
        self.output_bytes = 0
        self.last_error_log: str | None = None
        # Set by the runner when the run starts (`begin`); until then waits are bounded only by
        # `host_call_timeout_s` and output only by the default cap.
        self.deadline = Deadline(host_call_timeout_s, threading.Event())
        self.max_output_bytes = DEFAULT_MAX_OUTPUT_BYTES

    def begin(self, deadline: Deadline, max_output_bytes: int) -> None:
        self.deadline = deadline
        self.max_output_bytes = max_output_bytes

    def _wait(self, coro: Coroutine[Any, Any, T], *, timeout_code: ErrorCode = ErrorCode.ENGINE_ERROR) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return self._result(fut, self._timeout, timeout_code=timeout_code)

    def _result(
        self,
        fut: concurrent.futures.Future[T],
        timeout: float,
        *,
        timeout_code: ErrorCode = ErrorCode.ENGINE_ERROR,
    ) -> T:
        try:
            return self.deadline.result(fut, timeout)
        except HostError:
            raise
        except TimeoutError as e:
            if self.deadline.stopped is not None:
                raise HostError(timeout_code, self.deadline.stopped[1]) from e
            raise HostError(timeout_code, "the host call timed out") from e
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
        return self._streamed(lambda on_text: self._services.generate_text(self.tenant, params, on_text))

    def _streamed(self, start: Callable[[Callable[[str], None]], Coroutine[Any, Any, T]]) -> T:
        """Run the generation `start` makes, emitting its text as it comes."""
        # The text arrives on the event loop; it is emitted here, on this worker thread, like
        # every emit: the invocation's output and counters have one thread.
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        fut = asyncio.run_coroutine_threadsafe(start(pieces.put), self._loop)
        fut.add_done_callback(lambda _: pieces.put(None))  # after the last piece
        end = time.monotonic() + self._timeout
        while (left := min(self.deadline.remaining(), end - time.monotonic())) > 0:
            try:
                piece = pieces.get(timeout=min(left, WAIT_SLICE_S))
            except queue.Empty:
                continue
            if piece is None:
                break
            try:
                self.emit(piece)
            except HostError:
                fut.cancel()  # the invocation is over: so is its generation
                raise
        return self._result(fut, max(0.0, end - time.monotonic()))

    def generate_with(self, params: GenerateParams, options: GenerateOptions) -> GenerationDetail:
        """The ABI's sampling generate (1.2): streamed like generate-stream when `options.stream`."""
        self.host_calls["generate_with"] += 1

        def start(on_text: Callable[[str], None] | None) -> Coroutine[Any, Any, GenerationDetail]:
            return self._services.generate_with(self.tenant, params, options, on_text)

        return self._streamed(start) if options.stream else self._wait(start(None))

    def sampler_decide(self, decisions: SamplerDecisions) -> None:
        raise HostError(ErrorCode.UNSUPPORTED, "realm_sampler_decide is only for realm_sampler_step")

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

    # ---- 1.3: tools. A wait cut by the deadline is `timed-out` (the run then ends as wasm_timeout).

    def http_fetch(self, request: HttpRequestPayload) -> HttpResponsePayload:
        self.host_calls["http_fetch"] += 1
        return self._wait(self._services.http_fetch(self.tenant, request), timeout_code=ErrorCode.TIMED_OUT)

    def mcp_list_tools(self, server: str) -> list[ToolInfoPayload]:
        self.host_calls["mcp_list_tools"] += 1
        return self._wait(
            self._services.mcp_list_tools(self.tenant, server), timeout_code=ErrorCode.TIMED_OUT
        )

    def mcp_call_tool(self, call: ToolCallPayload) -> ToolResultPayload:
        self.host_calls["mcp_call_tool"] += 1
        return self._wait(self._services.mcp_call_tool(self.tenant, call), timeout_code=ErrorCode.TIMED_OUT)

    # ---- 1.4: retrieval.

    def embed(self, params: EmbedPayload) -> EmbeddingsPayload:
        self.host_calls["embed"] += 1
        return self._wait(self._services.embed(self.tenant, params))

    def collection_create(self, params: CollectionCreatePayload) -> CollectionInfoPayload:
        self.host_calls["collection_create"] += 1
        return self._wait(self._services.collection_create(self.tenant, params))

    def collection_list(self) -> list[CollectionInfoPayload]:
        self.host_calls["collection_list"] += 1
        return self._wait(self._services.collection_list(self.tenant))

    def collection_delete(self, collection: str) -> None:
        self.host_calls["collection_delete"] += 1
        self._wait(self._services.collection_delete(self.tenant, collection))

    def collection_add_texts(self, params: AddTextsPayload) -> list[str]:
        self.host_calls["collection_add_texts"] += 1
        return self._wait(self._services.collection_add_texts(self.tenant, params))

    def collection_search(self, params: SearchPayload) -> list[HitPayload]:
        self.host_calls["collection_search"] += 1
        return self._wait(self._services.collection_search(self.tenant, params))

    # ---- 1.5: pipelines.

    def run_pipeline(self, params: PipelineRunRequest) -> PipelineRunPayload:
        self.host_calls["run_pipeline"] += 1
        return self._wait(self._services.run_pipeline(self.tenant, params))

    def input(self) -> str:
        self.host_calls["input"] += 1
        return self.input_data

    def emit(self, chunk: str) -> None:
        """Runs on the invocation's worker thread only: the guest's own emits and a streamed
        generate's text alike (`host_generate` hands the latter over from the event loop).

        The output is capped (`max_output_bytes`): the emit that would pass it ends the
        invocation with `wasm_output_limit`. A sink that returns a future holds the guest back
        until the consumer has taken the chunk, never past the deadline."""
        self.host_calls["emit"] += 1
        size = len(chunk.encode("utf-8", "surrogatepass"))
        if self.output_bytes + size > self.max_output_bytes:
            message = f"the invocation's output passed its limit of {self.max_output_bytes} bytes"
            self.deadline.stop(InvocationErrorCode.OUTPUT_LIMIT, message)
            raise HostError(ErrorCode.TOO_LARGE, message)
        self.output_bytes += size
        self.output.append(chunk)
        pending = self._on_output(chunk)
        if pending is None:
            return
        try:
            self.deadline.result(pending, self._timeout)
        except concurrent.futures.CancelledError:
            pass  # the consumer left: the chunk is dropped, the invocation goes on
        except TimeoutError:
            reason = self.deadline.stopped
            raise HostError(
                ErrorCode.ENGINE_ERROR, reason[1] if reason else "the output was not consumed in time"
            ) from None

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

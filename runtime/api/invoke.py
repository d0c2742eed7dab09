"""Tenant WebAssembly invocations over HTTP, and the host services their modules call.

`POST /v1/tenants/{tenant}/invoke` runs the tenant's current module with the request body as its
input. The response is the module's output: its JSON when the output is JSON, else
`{"output": "<text>"}`; with `Accept: text/event-stream` every emitted chunk is sent as it comes.
`PUT /v1/tenants/{tenant}/module` deploys a new module (hot swap: invocations in flight finish on
the module they started with).

A generate from WASM goes through the same admission, quotas and metrics as an API request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from realm.runtime import module_sources
from realm.runtime.conversations import (
    UNSET,
    Conversation,
    ConversationError,
    ConversationNotFound,
    ConversationStore,
    InvalidConversation,
    LimitExceeded,
    VersionConflict,
)
from realm.runtime.conversations import Message as StoredMessage
from realm.runtime.engines.base import SamplingParams
from realm.runtime.sandbox.abi import (
    ConversationCreate,
    ConversationMessage,
    ConversationPayload,
    ConversationPut,
    ErrorCode,
    GenerateParams,
    Generation,
    HostError,
    ModelInfoPayload,
)
from realm.runtime.sandbox.context import InvocationContext
from realm.runtime.sandbox.runner import InvocationFailed, SandboxLimits

from .errors import APIError
from .generation import Generation as EngineGeneration
from .routes_openai import app_state, check_limits, request_tenant, resolve_model
from .state import AppState

router = APIRouter()
log = logging.getLogger(__name__)

_API_TO_HOST = {
    400: ErrorCode.INVALID_ARGUMENT,
    403: ErrorCode.MODEL_NOT_ALLOWED,
    404: ErrorCode.MODEL_NOT_FOUND,
    429: ErrorCode.QUOTA_EXCEEDED,
}


def _host_error(e: APIError) -> HostError:
    return HostError(_API_TO_HOST.get(e.status, ErrorCode.ENGINE_ERROR), e.message)


def _conversation_host_error(e: ConversationError) -> HostError:
    if isinstance(e, ConversationNotFound):
        code = ErrorCode.NOT_FOUND
    elif isinstance(e, VersionConflict):
        code = ErrorCode.CONFLICT
    elif isinstance(e, LimitExceeded):
        code = ErrorCode.TOO_LARGE
    elif isinstance(e, InvalidConversation):
        code = ErrorCode.INVALID_ARGUMENT
    else:
        code = ErrorCode.UNAVAILABLE
    return HostError(code, e.message)


def _stored(messages: list[ConversationMessage]) -> list[StoredMessage]:
    return [StoredMessage(role=m.role, content=m.content, name=m.name) for m in messages]


def _conversation_payload(c: Conversation) -> ConversationPayload:
    return ConversationPayload(
        id=c.id,
        version=c.version,
        created_at=c.created_at,
        updated_at=c.updated_at,
        metadata=c.metadata,
        messages=[ConversationMessage(role=m.role, content=m.content, name=m.name) for m in c.messages],
        state=c.state,
        kv_key=c.kv_key,
    )


class RuntimeHostServices:
    """HostServices for one tenant's invocations, backed by the runtime's engines and scheduler."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def _engine(self, tenant: str, model: str) -> Any:
        entry = self.state.tenants.get(tenant)
        if entry is None:
            raise HostError(ErrorCode.MODEL_NOT_ALLOWED, f"tenant {tenant!r} is no longer configured")
        try:
            return entry, resolve_model(self.state, entry, model)
        except APIError as e:
            raise _host_error(e) from e

    async def generate(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> Generation:
        entry, engine = self._engine(tenant, params.model)
        ids = engine.encode(params.prompt)
        try:
            max_tokens = check_limits(engine, entry, len(ids), params.max_tokens, None)
        except APIError as e:
            raise _host_error(e) from e
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            stop=tuple(params.stop),
            seed=params.seed,
        )
        gen = EngineGeneration(
            self.state,
            tenant=tenant,
            model=params.model,
            engine=engine,
            endpoint="wasm",
            prompt_ids=ids,
            params=sampling,
            arrived=time.perf_counter(),
            id_prefix="wasm",
        )
        parts: list[str] = []
        try:
            try:
                await gen.start()
            except APIError as e:
                raise _host_error(e) from e
            async for event in gen.events():
                if event.text:
                    parts.append(event.text)
                    if on_text is not None:
                        on_text(event.text)
                if event.error:
                    raise HostError(ErrorCode.ENGINE_ERROR, event.error)
            gen.outcome = "success"
        finally:
            await gen.close()
        return Generation(
            text="".join(parts),
            finish_reason=gen.finish_reason or "stop",
            prompt_tokens=gen.usage.prompt_tokens,
            completion_tokens=gen.usage.completion_tokens,
        )

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        _, engine = self._engine(tenant, model)
        ids: list[int] = engine.encode(text, add_special=False)
        return ids

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        _, engine = self._engine(tenant, model)
        vocab = engine.info.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise HostError(ErrorCode.INVALID_ARGUMENT, f"token ids must be in [0, {vocab})")
        text: str = engine.decode(list(tokens))
        return text

    # ---- conversations (ABI 1.1): the invocation's tenant scopes every call ---------------------

    def _conversations(self) -> ConversationStore:
        if self.state.conversations is None:
            raise HostError(ErrorCode.UNAVAILABLE, "conversations are not enabled on this runtime")
        return self.state.conversations

    async def conversation_create(self, tenant: str, params: ConversationCreate) -> ConversationPayload:
        try:
            c = await self._conversations().create(
                tenant, metadata=params.metadata, messages=_stored(params.messages), state=params.state
            )
        except ConversationError as e:
            raise _conversation_host_error(e) from e
        return _conversation_payload(c)

    async def conversation_get(self, tenant: str, conversation_id: str) -> ConversationPayload:
        try:
            return _conversation_payload(await self._conversations().get(tenant, conversation_id))
        except ConversationError as e:
            raise _conversation_host_error(e) from e

    async def conversation_put(self, tenant: str, params: ConversationPut) -> ConversationPayload:
        try:
            c = await self._conversations().update(
                tenant,
                params.id,
                expected_version=params.expected_version,
                append=_stored(params.append),
                state=params.state if params.changes_state else UNSET,
                metadata=params.metadata if params.metadata is not None else UNSET,
            )
        except ConversationError as e:
            raise _conversation_host_error(e) from e
        return _conversation_payload(c)

    async def conversation_delete(self, tenant: str, conversation_id: str) -> None:
        try:
            await self._conversations().delete(tenant, conversation_id)
        except ConversationError as e:
            raise _conversation_host_error(e) from e

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        _, engine = self._engine(tenant, model)
        info = engine.info
        return ModelInfoPayload(
            name=info.name,
            version=info.version,
            engine=info.engine,
            context_length=info.context_length,
            vocab_size=info.vocab_size,
            has_chat_template=info.has_chat_template,
        )


def _own_tenant(request: Request, tenant: str) -> AppState:
    state = app_state(request)
    entry = request_tenant(request)
    if entry.name != tenant:
        raise APIError(
            403, f"This API key belongs to tenant '{entry.name}', not '{tenant}'.", code="wrong_tenant"
        )
    if state.sandbox is None:
        raise APIError(
            503, "The WebAssembly sandbox is not running.", type="service_unavailable", code="loading"
        )
    return state


def _failure(e: InvocationFailed) -> APIError:
    return APIError(e.http_status, e.message, type="invocation_error", code=str(e.code))


@router.put("/v1/tenants/{tenant}/module", response_model=None)
async def deploy_module(tenant: str, request: Request) -> JSONResponse:
    state = _own_tenant(request, tenant)
    assert state.sandbox is not None
    wasm = await request.body()
    try:
        module = await asyncio.to_thread(state.sandbox.deploy, tenant, wasm)
    except InvocationFailed as e:
        raise _failure(e) from e
    state.metrics.wasm_deploys.labels(tenant).inc()
    return JSONResponse(
        {
            "tenant": tenant,
            "sha256": module.sha256,
            "kind": module.kind,
            "abi": ".".join(map(str, module.abi_version)),
        }
    )


@router.post("/v1/tenants/{tenant}/invoke", response_model=None)
async def invoke(tenant: str, request: Request) -> Response:
    state = _own_tenant(request, tenant)
    sandbox = state.sandbox
    assert sandbox is not None
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
        json.loads(text or "null")
    except (UnicodeDecodeError, ValueError) as e:
        raise APIError(400, "The invocation input must be UTF-8 JSON.", code="invalid_json") from e
    module = sandbox.current(tenant)
    if module is None:
        raise APIError(404, f"Tenant '{tenant}' has no WebAssembly module deployed.", code="wasm_no_module")
    entry = request_tenant(request)
    limits = SandboxLimits.from_quotas(entry.spec.quotas)
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[str | None] = asyncio.Queue()
    streaming = "text/event-stream" in request.headers.get("accept", "")

    def on_output(chunk: str) -> None:  # worker thread
        if streaming:
            loop.call_soon_threadsafe(chunks.put_nowait, chunk)

    ctx = InvocationContext(
        tenant=tenant,
        input_data=text,
        services=RuntimeHostServices(state),
        loop=loop,
        on_output=on_output,
    )
    metrics = state.metrics

    async def run() -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await sandbox.invoke(module, ctx, limits)
            outcome = "success"
            if result.fuel_used is not None:
                metrics.wasm_fuel.labels(tenant).inc(result.fuel_used)
            metrics.wasm_memory_peak.labels(tenant).observe(result.memory_peak_bytes)
            return result
        except InvocationFailed as e:
            outcome = str(e.code)
            raise
        finally:
            metrics.wasm_invocations.labels(tenant, outcome).inc()
            metrics.wasm_wall.labels(tenant).observe(time.perf_counter() - started)
            for name, n in ctx.host_calls.items():
                metrics.wasm_host_calls.labels(tenant, name).inc(n)

    if not streaming:
        try:
            result = await run()
        except InvocationFailed as e:
            raise _failure(e) from e
        headers = {"X-Realm-Module-Sha256": module.sha256}
        try:
            return JSONResponse(json.loads(result.output), headers=headers)
        except ValueError:
            return JSONResponse({"output": result.output}, headers=headers)

    async def events() -> AsyncIterator[bytes]:
        task = asyncio.create_task(run())

        def finished(t: asyncio.Task[Any]) -> None:
            # Retrieved here so that a caller who left never leaves an unobserved exception behind.
            if not t.cancelled():
                t.exception()
            chunks.put_nowait(None)

        # A caller who leaves does not stop the module (it may be inside a host call): it runs to
        # its end or its deadline and its output is dropped.
        task.add_done_callback(finished)
        while (chunk := await chunks.get()) is not None:
            yield f"data: {json.dumps({'chunk': chunk})}\n\n".encode()
        try:
            result = task.result()
            done = {"done": True, "host_calls": dict(result.host_calls), "wall_ms": result.wall_s * 1000}
            yield f"data: {json.dumps(done)}\n\n".encode()
        except InvocationFailed as e:
            yield f"data: {json.dumps(_failure(e).body())}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"X-Realm-Module-Sha256": module.sha256}
    )


def deploy_configured_modules(
    state: AppState, modules_dir: Path | None, s3_get: module_sources.S3Get | None = None
) -> int:
    """Bring each tenant's module in line with its spec (`spec.wasm`, pinned by sha256): from
    `modules_dir`, the ConfigMaps the operator projects under it, or the spec's S3 URI (see
    module_sources). Runs on every config (re)load, off the event loop; a module that cannot be had
    leaves the tenant's current one (if any) in place and is counted. Returns how many tenants' pinned
    modules are not deployed (the runtime retries while that is not 0)."""
    sandbox = state.sandbox
    if sandbox is None or modules_dir is None:
        return 0
    getter = s3_get
    missing = 0
    for entry in state.tenants.values():
        source = entry.spec.wasm
        current = sandbox.current(entry.name)
        if source is None or (current is not None and current.sha256 == source.sha256):
            continue
        if getter is None and source.s3_uri:
            getter = module_sources.s3_getter()  # only a tenant with an S3 module pays for a client
        try:
            wasm = module_sources.module_bytes(source, modules_dir, getter)
            sandbox.deploy(entry.name, wasm)
        except module_sources.ModuleUnavailable as e:
            state.metrics.wasm_deploy_failures.labels(entry.name).inc()
            log.error("tenant %s: %s", entry.name, e)
            missing += 1
            continue
        except InvocationFailed as e:
            # A module the sandbox rejects stays rejected: retrying would only repeat the compile.
            state.metrics.wasm_deploy_failures.labels(entry.name).inc()
            log.error(
                "tenant %s: module %s rejected: %s (%s)", entry.name, source.sha256[:12], e.message, e.code
            )
            continue
        state.metrics.wasm_deploys.labels(entry.name).inc()
        log.info("tenant %s: deployed module %s", entry.name, source.sha256[:12])
    return missing

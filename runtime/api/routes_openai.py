"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Per request: the middleware has authenticated the tenant; FastAPI has parsed the body; here we
resolve the model, tokenize, enforce the tenant's size limits, then hand over to `Generation`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from realm.runtime.conversations.chat import ChatTurn
from realm.runtime.engines.base import ChatMessage, Engine, EngineError, SamplingParams, TokenEvent
from realm.runtime.kvstore.snapshots import kv_key_hint
from realm.runtime.spec.runtime_config import TenantEntry

from . import sse
from .errors import APIError, bad_request, error_body, unavailable
from .generation import Generation
from .logit_bias import logit_bias_processor
from .routes_conversations import begin_chat_turn, finish_chat_turn, prompt_messages
from .schemas import ChatCompletionRequest, CompletionRequest, Message, _SamplingFields
from .state import AppState

router = APIRouter()

T = TypeVar("T")

# Roles OpenAI added after chat templates were written; templates know them by their older name.
_ROLE_ALIASES = {"developer": "system"}


class ClientGone(Exception):
    """The client closed the connection before the response began."""


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.realm
    return state


def request_tenant(request: Request) -> TenantEntry:
    tenant: TenantEntry = request.state.tenant  # set by the auth middleware for every /v1 path
    return tenant


def resolve_model(state: AppState, tenant: TenantEntry, model: str) -> Engine:
    if model not in state.models:
        raise APIError(404, f"The model '{model}' does not exist.", code="model_not_found", param="model")
    if model not in tenant.spec.allowed_models:
        raise APIError(
            403,
            f"Tenant '{tenant.name}' may not use the model '{model}'.",
            code="model_not_allowed",
            param="model",
        )
    engine = state.engines.get(model)
    if engine is None:
        raise APIError(
            503, f"The model '{model}' is still loading.", type="service_unavailable", code="loading"
        )
    return engine


def chat_prompt_ids(engine: Engine, messages: list[Message]) -> list[int]:
    rendered = engine.apply_chat_template(
        [ChatMessage(role=_ROLE_ALIASES.get(m.role, m.role), content=m.text()) for m in messages]
    )
    ids: list[int] = engine.encode(rendered, add_special=False)
    # Templates of some families write BOS themselves and others leave it to the tokenizer; adding
    # it blindly would double it, which measurably degrades output. Add it only where it is missing.
    bos: list[int] = engine.encode("", add_special=True)
    if bos and ids[: len(bos)] != bos:
        ids = bos + ids
    return ids


def completion_prompt_ids(engine: Engine, body: CompletionRequest) -> list[int]:
    prompt: Any = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a one-element batch, unwrapped (larger ones were rejected)
    if isinstance(prompt, str):
        encoded: list[int] = engine.encode(prompt, add_special=True)
        return encoded
    vocab = engine.info.vocab_size
    ids = [int(t) for t in prompt]
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise bad_request(
            f"Token id {bad[0]} is out of range [0, {vocab}).", code="invalid_value", param="prompt"
        )
    return ids


def check_limits(
    engine: Engine, tenant: TenantEntry, prompt_len: int, requested: int | None, default: int | None
) -> int:
    """The max_tokens to use, after the model's context and the tenant's quotas have had their say."""
    context: int = engine.info.context_length
    quotas = tenant.spec.quotas
    if quotas.max_prompt_tokens is not None and prompt_len > quotas.max_prompt_tokens:
        raise bad_request(
            f"The prompt has {prompt_len} tokens; this tenant may send at most {quotas.max_prompt_tokens}.",
            code="context_length_exceeded",
            param="messages",
        )
    if prompt_len >= context:
        raise bad_request(
            f"This model's maximum context length is {context} tokens; the prompt has {prompt_len}.",
            code="context_length_exceeded",
            param="messages",
        )
    if requested is not None:
        if requested > context:
            raise bad_request(
                f"max_tokens is {requested}; this model's context holds only {context} tokens.",
                code="invalid_value",
                param="max_tokens",
            )
        if quotas.max_tokens_per_request is not None and requested > quotas.max_tokens_per_request:
            raise bad_request(
                f"max_tokens is {requested}; this tenant may request at most "
                f"{quotas.max_tokens_per_request}.",
                code="max_tokens_exceeded",
                param="max_tokens",
            )
        if prompt_len + requested > context:
            raise bad_request(
                f"This model's maximum context length is {context} tokens; the prompt ({prompt_len}) plus "
                f"max_tokens ({requested}) exceed it.",
                code="context_length_exceeded",
                param="max_tokens",
            )
        return requested
    limit = context - prompt_len
    if quotas.max_tokens_per_request is not None:
        limit = min(limit, quotas.max_tokens_per_request)
    return min(limit, default) if default is not None else limit


def sampling_params(body: _SamplingFields, max_tokens: int, logprobs: int | None) -> SamplingParams:
    given: dict[str, Any] = {
        name: getattr(body, name)
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "seed",
            "ignore_eos",
        )
        if getattr(body, name) is not None
    }
    try:
        return SamplingParams(max_tokens=max_tokens, stop=body.stop_list(), logprobs=logprobs, **given)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise bad_request(
            f"Invalid sampling parameter: {first['msg']}", code="invalid_value", param=param
        ) from e


async def until_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`, cancelling it if the client hangs up meanwhile (queue waits can be long)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work())
    watch_task = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientGone()
    return work_task.result()


def _token_text(engine: Engine, event: TokenEvent) -> str:
    return engine.decode([event.token_id]) if event.token_id is not None else ""


def _chat_logprobs(engine: Engine, event: TokenEvent) -> list[dict[str, Any]]:
    if event.token_id is None or event.logprob is None:
        return []
    token = _token_text(engine, event)
    return [
        {
            "token": token,
            "logprob": event.logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())}
                for t in event.top_logprobs
            ],
        }
    ]


class _CompletionLogprobs:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []

    def add(self, engine: Engine, event: TokenEvent, offset: int) -> None:
        if event.token_id is None or event.logprob is None:
            return
        self.tokens.append(_token_text(engine, event))
        self.token_logprobs.append(event.logprob)
        self.top_logprobs.append({t.token: t.logprob for t in event.top_logprobs})
        self.text_offset.append(offset)

    def as_openai(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


def _finish_error(gen: Generation) -> APIError | None:
    """Engine-side endings that are not a completion: they become errors, never a silent truncation."""
    if gen.finish_reason == "cancelled":
        return unavailable("The request was cancelled by the server.")
    if gen.finish_reason == "error":
        return APIError(500, "The engine failed while generating.", type="server_error", code="engine_error")
    return None


async def _serve(
    request: Request,
    state: AppState,
    gen: Generation,
    *,
    stream: bool,
    body_fn: Callable[[Generation], AsyncIterator[bytes]],
    collect_fn: Callable[[Generation], Awaitable[dict[str, Any]]],
) -> Response:
    """Start the generation, then answer as one JSON document or as an SSE stream."""
    streaming = False
    try:
        await until_disconnect(request, gen.start)
        if stream:
            streaming = True  # from here on, the SSE body owns closing the generation
            return sse.SSEResponse(_guarded(gen, body_fn(gen)), on_close=gen.close)
        payload = await until_disconnect(request, lambda: collect_fn(gen))
        error = _finish_error(gen)
        if error is not None:
            raise error
        gen.outcome = "success"
        return JSONResponse(payload, headers={"x-request-id": gen.request_id})
    except ClientGone:
        gen.outcome = "cancelled"
        return Response(status_code=499)
    except APIError as e:
        if gen.outcome == "error" and e.status < 500:
            gen.outcome = "client_error"
        raise
    finally:
        if not streaming:
            await gen.close()


async def _guarded(gen: Generation, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Stream `chunks`; an error after the first byte can only be told as an SSE error event."""
    gen.outcome = "cancelled"  # until the stream completes; a disconnect leaves it so
    try:
        async for chunk in chunks:
            yield chunk
        error = _finish_error(gen)
        if error is not None:
            gen.outcome = "error"
            yield sse.event(error.body())
        else:
            gen.outcome = "success"
        yield sse.DONE
    except EngineError as e:
        gen.outcome = "error"
        yield sse.event(error_body(str(e), code="engine_rejected"))
        yield sse.DONE
    except Exception:
        gen.outcome = "error"
        yield sse.event(error_body("The server had an error while generating.", type="server_error"))
        yield sse.DONE
    finally:
        await gen.close()


def _count_rejection(state: AppState, tenant: str, model: str, endpoint: str, error: APIError) -> None:
    # Names a client invents must not become label values (unbounded cardinality).
    label = model if model in state.models else "unknown"
    outcome = "client_error" if error.status < 500 else "unavailable"
    state.metrics.requests.labels(tenant, label, endpoint, outcome).inc()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = app_state(request)
    tenant = request_tenant(request)
    allowed = set(tenant.spec.allowed_models)
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "realm"}
            for name in state.models
            if name in allowed
        ],
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    arrived = time.perf_counter()
    state = app_state(request)
    tenant = request_tenant(request)
    turn: ChatTurn | None = None
    messages = body.messages
    try:
        engine = resolve_model(state, tenant, body.model)
        if body.conversation is not None:
            turn = await begin_chat_turn(state, tenant.name, body.conversation, body.messages)
            messages = prompt_messages(turn)
        try:
            prompt_ids = chat_prompt_ids(engine, messages)
        except EngineError as e:
            raise bad_request(
                f"Cannot render the chat prompt: {e}", code="invalid_value", param="messages"
            ) from e
        max_tokens = check_limits(engine, tenant, len(prompt_ids), body.requested_max_tokens(), None)
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(body, max_tokens, top)
        bias = logit_bias_processor(body.logit_bias, engine.info.vocab_size)
    except APIError as e:
        _count_rejection(state, tenant.name, body.model, "chat", e)
        raise
    gen = Generation(
        state,
        tenant=tenant.name,
        model=body.model,
        engine=engine,
        endpoint="chat",
        prompt_ids=prompt_ids,
        params=params,
        logits_processor=bias,
        arrived=arrived,
        id_prefix="chatcmpl",
        kv_hint=kv_key_hint(turn.conversation.kv_key)[1] if turn is not None else None,
    )
    fingerprint = f"realm-{engine.info.version}"
    want_logprobs = bool(body.logprobs)

    def _chunk_head() -> dict[str, Any]:
        return {
            "id": gen.request_id,
            "object": "chat.completion.chunk",
            "created": gen.created,
            "model": gen.model,
            "system_fingerprint": fingerprint,
        }

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {**_chunk_head(), "choices": choices}
        if body.include_usage:
            payload["usage"] = usage
        return sse.event(payload)

    async def stream_body(g: Generation) -> AsyncIterator[bytes]:
        yield chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        text: list[str] = []
        async for event in g.events():
            text.append(event.text)
            if event.text or (want_logprobs and event.token_id is not None):
                lp = {"content": _chat_logprobs(engine, event)} if want_logprobs else None
                yield chunk(
                    [{"index": 0, "delta": {"content": event.text}, "logprobs": lp, "finish_reason": None}]
                )
        if g.finish_reason in ("stop", "length"):
            yield chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": g.finish_reason}])
            if body.include_usage:
                yield chunk([], g.usage.as_openai())
            if turn is not None:
                # Recorded only once the whole reply went out; a conflict is the stream's last word.
                try:
                    recorded = await finish_chat_turn(state, turn, "".join(text), kv_key=g.kv_key)
                except APIError as e:
                    yield sse.event(e.body())
                else:
                    yield sse.event({**_chunk_head(), "choices": [], "conversation": recorded})

    async def collect(g: Generation) -> dict[str, Any]:
        text: list[str] = []
        logprobs: list[dict[str, Any]] = []
        async for event in g.events():
            text.append(event.text)
            if want_logprobs:
                logprobs += _chat_logprobs(engine, event)
        payload: dict[str, Any] = {
            "id": g.request_id,
            "object": "chat.completion",
            "created": g.created,
            "model": g.model,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(text)},
                    "logprobs": {"content": logprobs} if want_logprobs else None,
                    "finish_reason": g.finish_reason,
                }
            ],
            "usage": g.usage.as_openai(),
        }
        if turn is not None and g.finish_reason in ("stop", "length"):
            payload["conversation"] = await finish_chat_turn(state, turn, "".join(text), kv_key=g.kv_key)
        return payload

    return await _serve(
        request, state, gen, stream=bool(body.stream), body_fn=stream_body, collect_fn=collect
    )


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    arrived = time.perf_counter()
    state = app_state(request)
    tenant = request_tenant(request)
    try:
        engine = resolve_model(state, tenant, body.model)
        prompt_ids = completion_prompt_ids(engine, body)
        # OpenAI's legacy endpoint defaults to 16 tokens; chat defaults to "as many as fit".
        max_tokens = check_limits(engine, tenant, len(prompt_ids), body.requested_max_tokens(), 16)
        params = sampling_params(body, max_tokens, body.logprobs)
        bias = logit_bias_processor(body.logit_bias, engine.info.vocab_size)
    except APIError as e:
        _count_rejection(state, tenant.name, body.model, "completions", e)
        raise
    gen = Generation(
        state,
        tenant=tenant.name,
        model=body.model,
        engine=engine,
        endpoint="completions",
        prompt_ids=prompt_ids,
        params=params,
        logits_processor=bias,
        arrived=arrived,
        id_prefix="cmpl",
    )
    fingerprint = f"realm-{engine.info.version}"
    want_logprobs = body.logprobs is not None

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": gen.request_id,
            "object": "text_completion",
            "created": gen.created,
            "model": gen.model,
            "system_fingerprint": fingerprint,
            "choices": choices,
        }
        if body.include_usage:
            payload["usage"] = usage
        return sse.event(payload)

    async def stream_body(g: Generation) -> AsyncIterator[bytes]:
        offset = 0
        async for event in g.events():
            if event.text or (want_logprobs and event.token_id is not None):
                lp = None
                if want_logprobs:
                    acc = _CompletionLogprobs()
                    acc.add(engine, event, offset)
                    lp = acc.as_openai()
                offset += len(event.text)
                yield chunk([{"index": 0, "text": event.text, "logprobs": lp, "finish_reason": None}])
        if g.finish_reason in ("stop", "length"):
            yield chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": g.finish_reason}])
            if body.include_usage:
                yield chunk([], g.usage.as_openai())

    async def collect(g: Generation) -> dict[str, Any]:
        text: list[str] = []
        acc = _CompletionLogprobs()
        offset = 0
        async for event in g.events():
            if want_logprobs:
                acc.add(engine, event, offset)
            text.append(event.text)
            offset += len(event.text)
        return {
            "id": g.request_id,
            "object": "text_completion",
            "created": g.created,
            "model": g.model,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(text),
                    "logprobs": acc.as_openai() if want_logprobs else None,
                    "finish_reason": g.finish_reason,
                }
            ],
            "usage": g.usage.as_openai(),
        }

    return await _serve(
        request, state, gen, stream=bool(body.stream), body_fn=stream_body, collect_fn=collect
    )

"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Per request: the middleware has authenticated the tenant; FastAPI has parsed the body; here the
serving layer resolves the model, builds the prompt, applies the tenant's limits and maps the
sampling fields, a `GenerationStream` runs it (a `RemoteStream` where another pod serves the model), and
the route renders OpenAI's JSON or SSE, the same for either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from realm.runtime.conversations import Conversation, ConversationError
from realm.runtime.conversations.chat import ChatTurn
from realm.runtime.engines.base import Constraint, Engine, EngineError, TokenEvent
from realm.runtime.kvstore.snapshots import kv_key_hint
from realm.runtime.serving.conversations import begin_chat_turn, finish_chat_turn
from realm.runtime.serving.errors import InvalidConstraint, ServingError
from realm.runtime.serving.generation import GenerationStream, Usage
from realm.runtime.serving.remote import (
    API_DEADLINE_S,
    InternalGenerateBody,
    RemoteStream,
    internal_body,
    open_remote,
    remote_for,
)
from realm.runtime.serving.requests import (
    format_constraint,
    logit_bias_processor,
    max_tokens_within_limits,
    response_constraint,
    routed_target,
    sampling_params,
    served_here,
    token_prompt_ids,
    tokenize_chat,
    tokenize_text,
)
from realm.runtime.serving.routing import ModelTarget
from realm.runtime.serving.tool_calls import (
    ArgumentsDelta,
    Call,
    CallStart,
    ContentDelta,
    HistoryMessage,
    Tool,
    ToolCallParser,
    ToolChoice,
    checked_tools,
    prompt_messages,
    tool_call_constraint,
)
from realm.runtime.spec.runtime_config import ClusterModel, TenantEntry

from . import sse
from .disconnect import ClientGone, until_disconnect
from .errors import APIError, api_error, error_body
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    route_key,
)
from .state import AppState

router = APIRouter()


def _one_prompt(body: CompletionRequest) -> Any:
    """The request's prompt: a text or token ids."""
    prompt: Any = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a one-element batch, unwrapped (larger ones were rejected)
    return prompt


async def completion_prompt_ids(state: AppState, engine: Engine, body: CompletionRequest) -> list[int]:
    prompt = _one_prompt(body)
    if isinstance(prompt, str):
        return await tokenize_text(state, engine, prompt)
    return token_prompt_ids(engine, prompt)


async def _response_constraint(engine: Engine, body: SamplingFields) -> Constraint | None:
    """The request's `response_format` as the engine's constraint (None: unconstrained), compiled off the
    event loop: a large schema takes a while."""
    fmt = body.constrained_format()
    if fmt is None:
        return None
    if fmt.json_schema is not None:
        schema = fmt.json_schema.json_schema
        return await asyncio.to_thread(
            response_constraint, engine, "json_schema", schema, param="response_format"
        )
    return await asyncio.to_thread(response_constraint, engine, "json_object", None, param="response_format")


def _remote_constraint(
    state: AppState, tenant: str, body: SamplingFields, endpoint: str
) -> Constraint | None:
    """The request's `response_format` as the constraint another pod will compile for its model (bounded
    here); a refusal is counted and raised as its API error."""
    fmt = body.constrained_format()
    if fmt is None:
        return None
    try:
        if fmt.json_schema is not None:
            return format_constraint("json_schema", fmt.json_schema.json_schema, param="response_format")
        return format_constraint("json_object", None, param="response_format")
    except ServingError as e:
        error = api_error(e)
        _count_rejection(state, tenant, body.model, endpoint, error)
        raise error from e


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


class _Generation(Protocol):
    """What rendering needs of a generation, run here (GenerationStream) or by another pod (RemoteStream)."""

    outcome: str

    @property
    def request_id(self) -> str: ...

    @property
    def created(self) -> int: ...

    @property
    def model(self) -> str: ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def usage(self) -> Usage: ...

    @property
    def kv_key(self) -> str | None: ...

    async def start(self) -> None: ...

    def events(self) -> AsyncIterator[TokenEvent]: ...

    async def close(self) -> None: ...

    def failure(self) -> ServingError | None: ...


def _generation_error(e: ServingError) -> APIError:
    """A generation's refusal or failure; a constraint here can only have come from `response_format`."""
    return api_error(e, param="response_format" if isinstance(e, InvalidConstraint) else None)


def _failure(gen: _Generation) -> APIError | None:
    failure = gen.failure()
    return _generation_error(failure) if failure is not None else None


async def _serve(
    request: Request,
    gen: _Generation,
    *,
    stream: bool,
    chunks: Callable[[], AsyncIterator[bytes]],
    answer: Callable[[], Awaitable[dict[str, Any]]],
) -> Response:
    """Start the generation, then answer as one JSON document or as an SSE stream."""
    streaming = False
    try:
        try:
            await until_disconnect(request, gen.start)
        except ServingError as e:
            raise _generation_error(e) from e
        if stream:
            streaming = True  # from here on, the SSE body owns closing the generation
            return sse.SSEResponse(_guarded(gen, chunks()), on_close=gen.close)
        payload = await until_disconnect(request, answer)
        error = _failure(gen)
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
    except ServingError as e:  # another pod's generation failed after it started, before the answer
        raise api_error(e) from e
    finally:
        if not streaming:
            await gen.close()


async def _guarded(gen: _Generation, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Stream `chunks`; an error after the first byte can only be told as an SSE error event."""
    gen.outcome = "cancelled"  # until the stream completes; a disconnect leaves it so
    try:
        async for chunk in chunks:
            yield chunk
        error = _failure(gen)
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
    except ServingError as e:  # a generation another pod ran, failed after its first text
        gen.outcome = "error"
        yield sse.event(api_error(e).body())
        yield sse.DONE
    except Exception:
        gen.outcome = "error"
        yield sse.event(error_body("The server had an error while generating.", type="server_error"))
        yield sse.DONE
    finally:
        await gen.close()


@dataclass(frozen=True)
class _Render:
    """How one answer is written, whichever pod generates it."""

    gen: _Generation
    fingerprint: str
    include_usage: bool
    logprobs: Engine | None  # the engine that decodes the asked-for logprobs' tokens; None: not asked

    def head(self, obj: str) -> dict[str, Any]:
        g = self.gen
        return {
            "id": g.request_id,
            "object": obj,
            "created": g.created,
            "model": g.model,
            "system_fingerprint": self.fingerprint,
        }

    def chunk(self, obj: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {**self.head(obj), "choices": choices}
        if self.include_usage:
            payload["usage"] = usage
        return sse.event(payload)


def _render(gen: GenerationStream | RemoteStream, *, include_usage: bool, logprobs: bool) -> _Render:
    if isinstance(gen, RemoteStream):
        # The engine (and its digest) is the other pod's: the version it was asked for names it. Logprobs
        # were refused before the call (_open_remote).
        return _Render(gen, f"realm-{gen.target.name}-{gen.target.version}", include_usage, None)
    engine = gen.engine
    return _Render(gen, f"realm-{engine.info.version}", include_usage, engine if logprobs else None)


async def _chat_chunks(
    r: _Render, state: AppState, turn: ChatTurn | None, calls: bool
) -> AsyncIterator[bytes]:
    if calls:
        async for chunk in _tool_chunks(r):
            yield chunk
        return
    g, obj, engine = r.gen, "chat.completion.chunk", r.logprobs
    yield r.chunk(
        obj,
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    )
    text: list[str] = []
    async for event in g.events():
        text.append(event.text)
        if event.text or (engine is not None and event.token_id is not None):
            lp = {"content": _chat_logprobs(engine, event)} if engine is not None else None
            yield r.chunk(
                obj, [{"index": 0, "delta": {"content": event.text}, "logprobs": lp, "finish_reason": None}]
            )
    if g.finish_reason in ("stop", "length"):
        yield r.chunk(obj, [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": g.finish_reason}])
        if r.include_usage:
            yield r.chunk(obj, [], g.usage.as_openai())
        if turn is not None:
            # Recorded only once the whole reply went out; a conflict is the stream's last word.
            try:
                recorded = await finish_chat_turn(state, turn, "".join(text), kv_key=g.kv_key)
            except ConversationError as e:
                yield sse.event(api_error(e, param="conversation").body())
            else:
                yield sse.event({**r.head(obj), "choices": [], "conversation": _turn_recorded(recorded)})


def _tool_finish(g: _Generation, parser: ToolCallParser) -> str | None:
    """OpenAI's finish_reason for an answer read as tool calls: `tool_calls` once its calls are whole."""
    if g.finish_reason == "stop" and parser.is_calls and parser.complete:
        return "tool_calls"
    return g.finish_reason


async def _tool_chunks(r: _Render) -> AsyncIterator[bytes]:
    """A streamed answer that may hold tool calls, in OpenAI's deltas: the role first; then content
    fragments, or per call one delta with its index, id, type and name (arguments "") followed by
    deltas of argument fragments; then the finish reason."""
    g, obj = r.gen, "chat.completion.chunk"
    parser = ToolCallParser()
    role_sent = False

    def delta(d: dict[str, Any]) -> bytes:
        return r.chunk(obj, [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}])

    async def events() -> AsyncIterator[list[Any]]:
        async for event in g.events():
            yield parser.feed(event.text)
        yield parser.finish()

    async for batch in events():
        for e in batch:
            head: dict[str, Any] = {} if role_sent else {"role": "assistant"}
            role_sent = True
            if isinstance(e, ContentDelta):
                yield delta({**head, "content": e.text})
            elif isinstance(e, CallStart):
                call = {
                    "index": e.index,
                    "id": e.id,
                    "type": "function",
                    "function": {"name": e.name, "arguments": ""},
                }
                yield delta(
                    {**head, "content": None, "tool_calls": [call]} if head else {"tool_calls": [call]}
                )
            elif isinstance(e, ArgumentsDelta):
                yield delta({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
    if g.finish_reason in ("stop", "length"):
        if not role_sent:
            yield delta({"role": "assistant", "content": ""})
        finish = _tool_finish(g, parser)
        yield r.chunk(obj, [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if r.include_usage:
            yield r.chunk(obj, [], g.usage.as_openai())


def _call_json(c: Call) -> dict[str, Any]:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


async def _chat_answer(r: _Render, state: AppState, turn: ChatTurn | None, calls: bool) -> dict[str, Any]:
    g, engine = r.gen, r.logprobs
    text: list[str] = []
    logprobs: list[dict[str, Any]] = []
    parser = ToolCallParser()
    async for event in g.events():
        text.append(event.text)
        if calls:
            parser.feed(event.text)
        if engine is not None:
            logprobs += _chat_logprobs(engine, event)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    finish = g.finish_reason
    if calls:
        parser.finish()
        finish = _tool_finish(g, parser)
        if parser.is_calls:
            # Only calls read to their closing tag: a call cut off by max_tokens is not a call.
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [_call_json(c) for c in parser.calls],
            }
    payload: dict[str, Any] = {
        **r.head("chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": logprobs} if engine is not None else None,
                "finish_reason": finish,
            }
        ],
        "usage": g.usage.as_openai(),
    }
    if turn is not None and g.finish_reason in ("stop", "length"):
        try:
            recorded = await finish_chat_turn(state, turn, "".join(text), kv_key=g.kv_key)
        except ConversationError as e:
            raise api_error(e, param="conversation") from e
        payload["conversation"] = _turn_recorded(recorded)
    return payload


async def _completion_chunks(r: _Render) -> AsyncIterator[bytes]:
    g, obj, engine = r.gen, "text_completion", r.logprobs
    offset = 0
    async for event in g.events():
        if event.text or (engine is not None and event.token_id is not None):
            lp = None
            if engine is not None:
                acc = _CompletionLogprobs()
                acc.add(engine, event, offset)
                lp = acc.as_openai()
            offset += len(event.text)
            yield r.chunk(obj, [{"index": 0, "text": event.text, "logprobs": lp, "finish_reason": None}])
    if g.finish_reason in ("stop", "length"):
        yield r.chunk(obj, [{"index": 0, "text": "", "logprobs": None, "finish_reason": g.finish_reason}])
        if r.include_usage:
            yield r.chunk(obj, [], g.usage.as_openai())


async def _completion_answer(r: _Render) -> dict[str, Any]:
    g, engine = r.gen, r.logprobs
    text: list[str] = []
    acc = _CompletionLogprobs()
    offset = 0
    async for event in g.events():
        if engine is not None:
            acc.add(engine, event, offset)
        text.append(event.text)
        offset += len(event.text)
    return {
        **r.head("text_completion"),
        "choices": [
            {
                "index": 0,
                "text": "".join(text),
                "logprobs": acc.as_openai() if engine is not None else None,
                "finish_reason": g.finish_reason,
            }
        ],
        "usage": g.usage.as_openai(),
    }


def _turn_recorded(c: Conversation) -> dict[str, Any]:
    """What a chat response says about the conversation it continued."""
    return {"id": c.id, "version": c.version}


def _count_rejection(state: AppState, tenant: str, model: str, endpoint: str, error: APIError) -> None:
    # Names a client invents must not become label values (unbounded cardinality): a loaded version's
    # key, else a known model's name (a bare name, an unknown version), else "unknown".
    name = model.partition("@")[0]
    known = model in state.models or any(m.name == name for m in state.models.values())
    label = (model if model in state.models else name) if known else "unknown"
    outcome = "client_error" if error.status < 500 else "unavailable"
    state.metrics.requests.labels(tenant, label, endpoint, outcome).inc()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state: AppState = request.app.state.realm
    tenant: TenantEntry = request.state.tenant  # set by the middleware
    allowed = set(tenant.spec.allowed_models)
    # Each model by its name (any version, by weight) and each version by its key (`name@version`):
    # those loaded here, then those other pods of the namespace serve (serving/remote.py).
    local = [n for key, m in state.models.items() for n in (m.name, key)]
    remote = (
        [n for m in state.remote.cluster.models for n in (m.name, f"{m.name}@{m.version}")]
        if state.remote is not None
        else []
    )
    ids = sorted({i for i in (*local, *remote) if i.partition("@")[0] in allowed})
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": 0, "owned_by": "realm"} for i in ids],
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    arrived = time.perf_counter()
    state: AppState = request.app.state.realm
    tenant: TenantEntry = request.state.tenant  # set by the middleware
    messages = [(m.role, m.text()) for m in body.messages]
    calls = bool(body.tools) and _tool_choice(body).mode != "none"
    key = route_key(request.headers, conversation=body.conversation, user=body.user)
    target, remote = _route(state, tenant, body.model, key, "chat")
    turn: ChatTurn | None = None
    gen: GenerationStream | RemoteStream
    if remote is None:
        gen, turn = await _chat_here(state, tenant, body, target, messages, arrived)
    else:
        gen = _open_remote(
            state,
            tenant,
            remote,
            model=body.model,
            endpoint="chat",
            id_prefix="chatcmpl",
            unsupported=(
                ("conversation", body.conversation is not None),
                ("logprobs", bool(body.logprobs)),
                ("logit_bias", bool(body.logit_bias)),
                ("tools", body.uses_tools()),
            ),
            body=internal_body(
                model=remote,
                fields=body,
                messages=messages,
                max_tokens=body.requested_max_tokens(),
                constraint=_remote_constraint(state, tenant.name, body, "chat"),
            ),
        )
    r = _render(gen, include_usage=body.include_usage, logprobs=bool(body.logprobs))
    return await _serve(
        request,
        gen,
        stream=bool(body.stream),
        chunks=lambda: _chat_chunks(r, state, turn, calls),
        answer=lambda: _chat_answer(r, state, turn, calls),
    )


async def _chat_here(
    state: AppState,
    tenant: TenantEntry,
    body: ChatCompletionRequest,
    target: ModelTarget,
    messages: Sequence[tuple[str, str]],
    arrived: float,
) -> tuple[GenerationStream, ChatTurn | None]:
    """The chat generation this pod runs (not yet started), and the conversation turn it continues."""
    turn: ChatTurn | None = None
    try:
        served = served_here(state, target)
        engine = served.engine
        if body.conversation is not None and body.uses_tools():
            # A conversation stores text turns; checked before its history is read.
            raise APIError(
                400,
                "Tool calling is not supported together with a conversation.",
                code="unsupported_value",
                param="tools",
            )
        if body.conversation is not None:
            try:
                turn = await begin_chat_turn(
                    state, tenant.name, body.conversation, [m.stored() for m in body.messages]
                )
            except ConversationError as e:
                raise api_error(e, param="conversation") from e
            messages = [(m.role, m.content) for m in turn.prompt]
        constraint: Constraint | None = None
        if body.uses_tools():
            messages, constraint = await _tool_prompt(engine, body)
        prompt_ids = await tokenize_chat(state, engine, messages)
        max_tokens = max_tokens_within_limits(
            engine, tenant, len(prompt_ids), body.requested_max_tokens(), None
        )
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(body, max_tokens=max_tokens, logprobs=top)
        bias = logit_bias_processor(body.logit_bias, engine.info.vocab_size)
        if constraint is None:
            constraint = await _response_constraint(engine, body)
    except (APIError, ServingError) as e:
        error = e if isinstance(e, APIError) else api_error(e)
        _count_rejection(state, tenant.name, body.model, "chat", error)
        raise error from e
    gen = GenerationStream(
        state,
        tenant=tenant.name,
        model=served.key,
        engine=engine,
        endpoint="chat",
        prompt_ids=prompt_ids,
        params=params,
        logits_processor=bias,
        constraint=constraint,
        arrived=arrived,
        id_prefix="chatcmpl",
        kv_hint=kv_key_hint(turn.conversation.kv_key)[1] if turn is not None else None,
    )
    return gen, turn


def _tool_choice(body: ChatCompletionRequest) -> ToolChoice:
    """OpenAI's default: `auto` with tools, `none` without."""
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("named", choice.function.name)
    if choice is None:
        return ToolChoice("auto" if body.tools else "none")
    return ToolChoice(choice)


def _tools(body: ChatCompletionRequest) -> list[Tool]:
    return [
        Tool(
            t.function.name,
            t.function.description or "",
            t.function.parameters or {"type": "object", "properties": {}},
        )
        for t in body.tools or []
    ]


def _history(body: ChatCompletionRequest) -> list[HistoryMessage]:
    return [
        HistoryMessage(
            role=m.role,
            content=m.text(),
            tool_calls=tuple(Call(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()),
            tool_call_id=m.tool_call_id,
        )
        for m in body.messages
    ]


async def _tool_prompt(
    engine: Engine, body: ChatCompletionRequest
) -> tuple[list[tuple[str, str]], Constraint | None]:
    """The prompt of a request with tools (or tool calls and results in its history), and the constraint
    its answer is held to; the tools are checked and compiled off the event loop."""
    if body.logprobs:
        raise APIError(
            400, "logprobs are not supported together with tools.", code="unsupported_value", param="logprobs"
        )
    tools, choice = _tools(body), _tool_choice(body)
    if tools and choice.mode != "none" and body.constrained_format() is not None:
        raise APIError(
            400,
            "response_format cannot be combined with tools the model may call.",
            code="unsupported_value",
            param="response_format",
        )
    parallel = body.parallel_tool_calls is not False
    await asyncio.to_thread(checked_tools, engine, tools, choice)
    messages = prompt_messages(_history(body), tools, choice)
    constraint = await asyncio.to_thread(tool_call_constraint, engine, tools, choice, parallel=parallel)
    return messages, constraint


def _route(
    state: AppState, tenant: TenantEntry, model: str, key: str | None, endpoint: str
) -> tuple[ModelTarget, ClusterModel | None]:
    """The version `model` reaches (counted once, here), and the cluster's entry to call when another
    pod serves it; a refusal is counted and raised as its API error."""
    try:
        target = routed_target(state, tenant, model, key, generates=True)
    except ServingError as e:
        error = api_error(e)
        _count_rejection(state, tenant.name, model, endpoint, error)
        raise error from e
    return target, remote_for(state, target)


def _open_remote(
    state: AppState,
    tenant: TenantEntry,
    target: ClusterModel,
    *,
    model: str,
    endpoint: str,
    id_prefix: str,
    unsupported: Sequence[tuple[str, bool]],
    body: InternalGenerateBody | None,
) -> RemoteStream:
    """A generation another pod will run, or the 4xx for what cannot go there (counted as refused)."""
    try:
        refused = [name for name, given in unsupported if given]
        if refused or body is None:
            what = refused[0] if refused else "prompt"
            raise APIError(
                400,
                f"{'A prompt of token ids' if not refused else refused[0]} is not supported for the model "
                f"'{model}', which another pod serves.",
                code="unsupported_remote",
                param=what,
            )
        return open_remote(
            state,
            tenant=tenant,
            target=target,
            body=body,
            deadline_s=API_DEADLINE_S,
            endpoint=endpoint,
            id_prefix=id_prefix,
        )
    except (APIError, ServingError) as e:
        error = e if isinstance(e, APIError) else api_error(e)
        _count_rejection(state, tenant.name, model, endpoint, error)
        raise error from e


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    arrived = time.perf_counter()
    state: AppState = request.app.state.realm
    tenant: TenantEntry = request.state.tenant  # set by the middleware
    key = route_key(request.headers, conversation=None, user=body.user)
    target, remote = _route(state, tenant, body.model, key, "completions")
    gen: GenerationStream | RemoteStream
    if remote is None:
        gen = await _completion_here(state, tenant, body, target, arrived)
    else:
        # A text prompt only: token ids are another model's.
        prompt = _one_prompt(body)
        gen = _open_remote(
            state,
            tenant,
            remote,
            model=body.model,
            endpoint="completions",
            id_prefix="cmpl",
            unsupported=(("logprobs", body.logprobs is not None), ("logit_bias", bool(body.logit_bias))),
            body=internal_body(
                model=remote,
                fields=body,
                prompt=prompt,
                max_tokens=body.requested_max_tokens(),
                default_max_tokens=16,
                constraint=_remote_constraint(state, tenant.name, body, "completions"),
            )
            if isinstance(prompt, str)
            else None,
        )
    r = _render(gen, include_usage=body.include_usage, logprobs=body.logprobs is not None)
    return await _serve(
        request,
        gen,
        stream=bool(body.stream),
        chunks=lambda: _completion_chunks(r),
        answer=lambda: _completion_answer(r),
    )


async def _completion_here(
    state: AppState, tenant: TenantEntry, body: CompletionRequest, target: ModelTarget, arrived: float
) -> GenerationStream:
    """The completion this pod runs (not yet started)."""
    try:
        served = served_here(state, target)
        engine = served.engine
        prompt_ids = await completion_prompt_ids(state, engine, body)
        # OpenAI's legacy endpoint defaults to 16 tokens; chat defaults to "as many as fit".
        max_tokens = max_tokens_within_limits(
            engine, tenant, len(prompt_ids), body.requested_max_tokens(), 16
        )
        params = sampling_params(body, max_tokens=max_tokens, logprobs=body.logprobs)
        bias = logit_bias_processor(body.logit_bias, engine.info.vocab_size)
        constraint = await _response_constraint(engine, body)
    except ServingError as e:
        error = api_error(e)
        _count_rejection(state, tenant.name, body.model, "completions", error)
        raise error from e
    return GenerationStream(
        state,
        tenant=tenant.name,
        model=served.key,
        engine=engine,
        endpoint="completions",
        prompt_ids=prompt_ids,
        params=params,
        logits_processor=bias,
        constraint=constraint,
        arrived=arrived,
        id_prefix="cmpl",
    )

"""The component binding: WIT world `realm:tenant/tenant` (wit/tenant.wit) on wasmtime-py 50.

The runner (runner.py) owns Engine, Store, limits and error mapping; this module only knows the
component model: which imports a tenant may have, how WIT values look in Python, and how a
host call reaches the invocation's `InvocationContext` (context.py, the one implementation).

How wasmtime-py 50 represents WIT values (read from wasmtime/component/_types.py; there is no
static bindgen, values are converted by the function's dynamic type on every call):

- string <-> str, u32/u64 <-> int, f32 <-> float (an int is refused), bool <-> bool,
  list<u32> <-> list[int], enum <-> the case name as str ("model-not-allowed").
- record <-> `wasmtime.component.Record`, a bare object whose attributes are the WIT field
  names, kebab-case included (getattr(r, "max-tokens")).
- option<T> <-> None or the T value.
- result<T, E> and variants are "tagged" only when the Python classes of the cases overlap:
  result<generation, host-error> has a Record on both sides, so it is
  `Variant("ok", record)` / `Variant("err", record)`; result<string, host-error> and
  result<list<u32>, host-error> are untagged: the str/list is ok, a Record is err.
  result<_, string> (the `run` export) lifts as None for ok and the str for err.

A Python exception escaping a host function would not reach the guest as an error: wasmtime-py
turns it into a trap ("python exception"), which kills the instance, and stashes it in a
process-global slot that another thread's call could pick up. So every host function here
returns an `err(host-error)` value instead, or, for the functions without a result, logs.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError
from wasmtime import Engine, Store, WasiConfig
from wasmtime.component import (
    Component,
    FuncType,
    Linker,
    Record,
    ResultType,
    String,
    Variant,
)

from . import context
from .abi import (
    ABI_MAJOR,
    ABI_MINOR,
    CONVERSATION_WIT_CODES,
    MAX_PAYLOAD_BYTES,
    PIPELINE_WIT_CODES,
    RETRIEVAL_WIT_CODES,
    SAMPLING_WIT_CODES,
    TOOLS_WIT_CODES,
    WIT_CONVERSATIONS_INTERFACE,
    WIT_HOST_INTERFACE,
    WIT_PACKAGE,
    WIT_PIPELINES_INTERFACE,
    WIT_RETRIEVAL_INTERFACE,
    WIT_SAMPLING_INTERFACE,
    WIT_TOOLS_INTERFACE,
    AddTextsPayload,
    CollectionCreatePayload,
    CollectionInfoPayload,
    ConstraintPayload,
    ConversationCreate,
    ConversationMessage,
    ConversationPayload,
    ConversationPut,
    DecisionPayload,
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
    SamplerSpec,
    SearchPayload,
    SequenceStepPayload,
    TextItemPayload,
    ToolCallPayload,
    ToolInfoPayload,
    ToolResultPayload,
)

log = logging.getLogger("realm.sandbox")
T = TypeVar("T")

RUN_EXPORT = "run"
# The interfaces of our own package a tenant may import, at any version 1.0.0 ..= 1.ABI_MINOR.x.
REALM_INTERFACES = frozenset(
    {"host", "types", "conversations", "sampling", "sampling-types", "tools", "retrieval", "pipelines"}
)
# What Linker.add_wasip2() defines. Anything else from wasi (wasi:http, wasi:keyvalue, 0.3) would
# only fail later, at instantiation, with a less helpful message.
WASI_PACKAGES = frozenset({"cli", "clocks", "filesystem", "io", "random", "sockets"})
WASI_VERSION = re.compile(r"0\.2\.\d+(?:-[0-9A-Za-z.-]+)?")
_U32_MAX = (1 << 32) - 1
_IMPORT_NAME = re.compile(
    r"(?P<ns>[a-z][a-z0-9-]*):(?P<pkg>[a-z][a-z0-9-]*)/(?P<iface>[a-z][a-z0-9-]*)(?:@(?P<ver>\S+))?"
)
_SEMVER = re.compile(
    r"(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
)


# ---- errors ----------------------------------------------------------------------------------


class ComponentRejected(Exception):
    """Stand-in for modules.InvocationFailed where that is missing (same attributes)."""

    def __init__(self, code: InvocationErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _failed(code: InvocationErrorCode, message: str) -> Exception:
    # Imported lazily: the sandbox's exception is the one its callers map to their own errors, and
    # its module imports this one. The stand-in keeps this module usable on its own.
    try:
        from .modules import InvocationFailed
    except ImportError:
        return ComponentRejected(code, message)
    exc: Exception = InvocationFailed(code, message)
    return exc


# ---- WIT values <-> Python ---------------------------------------------------------------------


def _record(**fields: Any) -> Record:
    """A WIT record; keyword names use underscores, the WIT fields use dashes."""
    r = Record()
    for name, value in fields.items():
        setattr(r, name.replace("_", "-"), value)
    return r


def _f32(x: float) -> float:
    # f32 arrives widened (0.7 -> 0.699999988...); the shortest decimal that round-trips through
    # f32 is what the guest wrote, and what logs and seeds-for-reproducibility should see.
    return float(f"{x:.7g}")


def _text(s: str) -> str:
    # Lowering a str with lone surrogates would raise inside wasmtime (a trap); the engine's
    # detokenizer can produce them from a token that splits a character.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")
    return s


def _too_large(s: str) -> bool:
    if len(s) > MAX_PAYLOAD_BYTES:
        return True
    if len(s) * 4 <= MAX_PAYLOAD_BYTES:  # no need to encode: even 4-byte characters fit
        return False
    return len(s.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES


def _host_error(code: ErrorCode, message: str) -> Record:
    return _record(code=code.wit_name, message=_text(message[:4000]))


def _params_from_wit(r: Any) -> GenerateParams:
    prompt: str = r.prompt
    if _too_large(prompt):
        raise HostError(ErrorCode.TOO_LARGE, f"the prompt is larger than {MAX_PAYLOAD_BYTES} bytes")
    return GenerateParams(
        model=r.model,
        prompt=prompt,
        max_tokens=getattr(r, "max-tokens"),
        temperature=_f32(r.temperature),
        top_p=_f32(getattr(r, "top-p")),
        top_k=getattr(r, "top-k"),
        stop=list(r.stop),
        seed=r.seed,
    )


def _generation_to_wit(g: GenerationPayload) -> Record:
    for n in (g.prompt_tokens, g.completion_tokens):
        if not 0 <= n <= _U32_MAX:
            raise HostError(ErrorCode.ENGINE_ERROR, f"token count {n} does not fit a u32")
    return _record(
        text=_text(g.text),
        finish_reason=g.finish_reason,
        prompt_tokens=g.prompt_tokens,
        completion_tokens=g.completion_tokens,
    )


def _model_info_to_wit(m: ModelInfoPayload) -> Record:
    return _record(
        name=m.name,
        version=m.version,
        engine=m.engine,
        context_length=min(max(m.context_length, 0), _U32_MAX),
        vocab_size=min(max(m.vocab_size, 0), _U32_MAX),
        has_chat_template=bool(m.has_chat_template),
    )


def _guarded(
    name: str,
    call: Callable[[], T],
    ok: Callable[[T], Any],
    *,
    tagged: bool,
    error: Callable[[ErrorCode, str], Record] = _host_error,
) -> Any:
    """Run one host call and lower its outcome to a WIT `result<_, host-error>` value (or, with
    `error`, another error record: the conversations interface has its own).

    `tagged` says whether wasmtime-py wants Variant("ok"/"err", ...) for this result type (see
    the module docstring): only when both cases are records.
    """
    try:
        value = ok(call())
    except HostError as e:
        err = error(e.code, e.message)
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        err = error(ErrorCode.INVALID_ARGUMENT, f"{name}: {errors}")
    except Exception as e:  # never into wasmtime: it would trap the guest (module docstring)
        log.exception("host function %s failed", name)
        err = error(ErrorCode.ENGINE_ERROR, f"{type(e).__name__}: {e}")
    else:
        return Variant("ok", value) if tagged else value
    return Variant("err", err) if tagged else err


# ---- the host functions (defined once per Linker; the invocation comes from the thread) -------


def _host_generate(stream: bool) -> Callable[[Any, Any], Any]:
    def host_generate(_store: Any, params: Any) -> Any:
        return _guarded(
            "generate-stream" if stream else "generate",
            lambda: context.current().host_generate(_params_from_wit(params), stream=stream),
            _generation_to_wit,
            tagged=True,
        )

    return host_generate


def _encode_tokens(_store: Any, model: str, text: str) -> Any:
    def call() -> list[int]:
        if _too_large(text):
            raise HostError(ErrorCode.TOO_LARGE, f"the text is larger than {MAX_PAYLOAD_BYTES} bytes")
        return context.current().encode_tokens(model, text)

    def ok(tokens: list[int]) -> list[int]:
        out = [int(t) for t in tokens]
        if any(not 0 <= t <= _U32_MAX for t in out):
            raise HostError(ErrorCode.ENGINE_ERROR, "a token id does not fit a u32")
        return out

    return _guarded("encode-tokens", call, ok, tagged=False)


def _decode_tokens(_store: Any, model: str, tokens: list[int]) -> Any:
    def call() -> str:
        if len(tokens) * 4 > MAX_PAYLOAD_BYTES:  # the same bound as the core binding's i32 array
            raise HostError(ErrorCode.TOO_LARGE, f"more than {MAX_PAYLOAD_BYTES // 4} tokens")
        return context.current().decode_tokens(model, tokens)

    return _guarded("decode-tokens", call, _text, tagged=False)


def _load_model_by_name(_store: Any, name: str) -> Any:
    return _guarded(
        "load-model-by-name",
        lambda: context.current().load_model_by_name(name),
        _model_info_to_wit,
        tagged=True,
    )


def _get_model_version(_store: Any, name: str) -> Any:
    return _guarded(
        "get-model-version", lambda: context.current().get_model_version(name), _text, tagged=False
    )


# input, emit and log have no result to carry an error: failures are logged, never raised.


def _input(_store: Any) -> str:
    try:
        return _text(context.current().input())
    except Exception:
        log.exception("host function input failed")
        return ""


def _emit(_store: Any, chunk: str) -> None:
    try:
        context.current().emit(chunk)
    except HostError:
        pass  # over the output limit or past the deadline: the run is being ended already
    except Exception:
        log.exception("host function emit failed")


_LOG_LEVELS = {level.name.lower(): level for level in LogLevel}


def _log(_store: Any, level: str, message: str) -> None:
    try:
        context.current().log(_LOG_LEVELS.get(level, LogLevel.INFO), message)
    except Exception:
        log.exception("host function log failed")


# ---- conversations (1.1) ----------------------------------------------------------------------
#
# result<conversation, conversation-error> has records on both sides (tagged); delete's
# result<_, conversation-error> is untagged (None is ok). The `state-change` variant has cases
# without payload on both sides, so it arrives tagged: Variant("keep"/"clear"/"set", payload).


def _conversation_error(code: ErrorCode, message: str) -> Record:
    return _record(code=CONVERSATION_WIT_CODES.get(code, "unavailable"), message=_text(message[:4000]))


def _check_size(*texts: str) -> None:
    # The same bound as a core module's argument: the strings of one call together.
    if sum(len(t) for t in texts) > MAX_PAYLOAD_BYTES or _too_large("".join(texts)):
        raise HostError(ErrorCode.TOO_LARGE, f"the arguments are larger than {MAX_PAYLOAD_BYTES} bytes")


def _messages_from_wit(items: Any) -> list[ConversationMessage]:
    return [ConversationMessage(role=m.role, content=m.content, name=m.name) for m in items]


def _metadata_from_wit(entries: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in entries:
        if e.key in out:
            raise HostError(ErrorCode.INVALID_ARGUMENT, f"metadata key {e.key!r} is given twice")
        out[e.key] = e.value
    return out


def _texts(messages: list[ConversationMessage], *more: str | None) -> list[str]:
    return [t for m in messages for t in (m.content, m.name or "")] + [t for t in more if t]


def _new_from_wit(r: Any) -> ConversationCreate:
    messages = _messages_from_wit(r.messages)
    metadata = _metadata_from_wit(r.metadata)
    _check_size(*_texts(messages, r.state, *metadata, *metadata.values()))
    return ConversationCreate(metadata=metadata, messages=messages, state=r.state)


def _change_from_wit(conversation_id: str, r: Any) -> ConversationPut:
    messages = _messages_from_wit(r.append)
    fields: dict[str, Any] = {
        "id": conversation_id,
        "expected_version": getattr(r, "expected-version"),
        "append": messages,
    }
    change = r.state
    if change.tag == "clear":
        fields["state"] = None
    elif change.tag == "set":
        fields["state"] = change.payload
    if r.metadata is not None:
        fields["metadata"] = _metadata_from_wit(r.metadata)
    md = fields.get("metadata") or {}
    _check_size(*_texts(messages, fields.get("state"), *md, *md.values()))
    return ConversationPut(**fields)


def _conversation_to_wit(c: ConversationPayload) -> Record:
    return _record(
        id=c.id,
        version=c.version,
        created_at=max(c.created_at, 0),
        updated_at=max(c.updated_at, 0),
        metadata=[_record(key=k, value=v) for k, v in c.metadata.items()],
        messages=[_record(role=m.role, content=_text(m.content), name=m.name) for m in c.messages],
        state=None if c.state is None else _text(c.state),
        kv_key=c.kv_key,
    )


def _conversation_create(_store: Any, params: Any) -> Any:
    return _guarded(
        "create",
        lambda: context.current().conversation_create(_new_from_wit(params)),
        _conversation_to_wit,
        tagged=True,
        error=_conversation_error,
    )


def _conversation_get(_store: Any, conversation_id: str) -> Any:
    return _guarded(
        "get",
        lambda: context.current().conversation_get(conversation_id),
        _conversation_to_wit,
        tagged=True,
        error=_conversation_error,
    )


def _conversation_put(_store: Any, conversation_id: str, change: Any) -> Any:
    return _guarded(
        "put",
        lambda: context.current().conversation_put(_change_from_wit(conversation_id, change)),
        _conversation_to_wit,
        tagged=True,
        error=_conversation_error,
    )


def _conversation_delete(_store: Any, conversation_id: str) -> Any:
    return _guarded(
        "delete",
        lambda: context.current().conversation_delete(conversation_id),
        lambda _: None,
        tagged=False,
        error=_conversation_error,
    )


# ---- sampling (1.2) ---------------------------------------------------------------------------
#
# result<generation-detail, sampling-error> has records on both sides (tagged). The `constraint`
# variant's cases overlap (strings), so it arrives tagged: Variant("json-schema", text),
# Variant("json-object", None), ...


def _sampling_error(code: ErrorCode, message: str) -> Record:
    return _record(code=SAMPLING_WIT_CODES.get(code, "engine-error"), message=_text(message[:4000]))


def _options_from_wit(r: Any) -> GenerateOptions:
    constraint = None
    if r.constraint is not None:
        value = r.constraint.payload if r.constraint.payload is not None else ""
        _check_size(value)
        constraint = ConstraintPayload(type=r.constraint.tag.replace("-", "_"), value=value)
    sampler = None
    if r.sampler is not None:
        _check_size(r.sampler.config)
        sampler = SamplerSpec(config=r.sampler.config, top_k=getattr(r.sampler, "top-k"))
    return GenerateOptions(constraint=constraint, logprobs=r.logprobs, sampler=sampler, stream=r.stream)


def _token_id(token: int) -> int:
    if not 0 <= token <= _U32_MAX:
        raise HostError(ErrorCode.ENGINE_ERROR, f"token id {token} does not fit a u32")
    return token


def _candidate_to_wit(token: int, logprob: float, text: str) -> Record:
    return _record(token=_token_id(token), logprob=float(logprob), text=_text(text))


def _detail_to_wit(d: GenerationDetail) -> Record:
    for n in (d.prompt_tokens, d.completion_tokens):
        if not 0 <= n <= _U32_MAX:
            raise HostError(ErrorCode.ENGINE_ERROR, f"token count {n} does not fit a u32")
    tokens = [
        _record(
            token=_token_id(t.token),
            logprob=float(t.logprob),
            top=[_candidate_to_wit(c.token, c.logprob, c.text) for c in t.top],
        )
        for t in d.tokens
    ]
    return _record(
        text=_text(d.text),
        finish_reason=d.finish_reason,
        prompt_tokens=d.prompt_tokens,
        completion_tokens=d.completion_tokens,
        tokens=tokens,
    )


def _sampling_generate(_store: Any, params: Any, options: Any) -> Any:
    return _guarded(
        "sampling.generate",
        lambda: context.current().generate_with(_params_from_wit(params), _options_from_wit(options)),
        _detail_to_wit,
        tagged=True,
        error=_sampling_error,
    )


# ---- the exported sampler (1.2): sequence-step records down, decision variants up -------------


def sequence_step_to_wit(s: SequenceStepPayload) -> Record:
    return _record(
        id=s.id,
        config=_text(s.config),
        step=s.step,
        candidates=[_candidate_to_wit(c.token, c.logprob, c.text) for c in s.candidates],
        tokens=[_token_id(t) for t in s.tokens],
    )


def decision_from_wit(d: Any) -> DecisionPayload:
    """A `decision` variant as the core binding's JSON decision (validated the same way)."""
    tag: str = d.tag
    payload = d.payload
    fields: dict[str, Any] = {"kind": tag}
    if tag == "token":
        fields["token"] = payload
    elif tag in ("allow", "force"):
        fields["tokens"] = list(payload)
    elif tag == "bias":
        fields["bias"] = [{"token": b.token, "bias": b.bias} for b in payload]
    decision: DecisionPayload = _DECISION.validate_python(fields)
    return decision


_DECISION: TypeAdapter[DecisionPayload] = TypeAdapter(DecisionPayload)


# ---- tools (1.3) ------------------------------------------------------------------------------
#
# result<http-response, tool-error> and result<tool-result, tool-error> have records on both
# sides (tagged); result<list<tool-info>, tool-error> is untagged (the list is ok). list<u8> is
# bytes both ways.


def _tool_error(code: ErrorCode, message: str) -> Record:
    return _record(code=TOOLS_WIT_CODES.get(code, "tool-failed"), message=_text(message[:4000]))


def _request_from_wit(r: Any) -> HttpRequestPayload:
    headers = [(h.name, h.value) for h in r.headers]
    body: bytes = r.body
    # The same bound as a core module's argument, which carries all of these in one JSON text.
    _check_size(r.method, r.url, *(t for h in headers for t in h))
    if len(body) > MAX_PAYLOAD_BYTES:
        raise HostError(ErrorCode.TOO_LARGE, f"the body is larger than {MAX_PAYLOAD_BYTES} bytes")
    return HttpRequestPayload(method=r.method, url=r.url, headers=headers, body=body)


def _response_to_wit(r: HttpResponsePayload) -> Record:
    return _record(
        status=r.status,
        headers=[_record(name=_text(n), value=_text(v)) for n, v in r.headers],
        body=bytes(r.body),
    )


def _tool_info_to_wit(tools: list[ToolInfoPayload]) -> list[Record]:
    return [
        _record(name=_text(t.name), description=_text(t.description), input_schema=json.dumps(t.input_schema))
        for t in tools
    ]


def _tool_result_to_wit(r: ToolResultPayload) -> Record:
    return _record(content=json.dumps(r.content), text=_text(r.text), is_error=r.is_error)


def _call_from_wit(server: str, tool: str, arguments: str) -> ToolCallPayload:
    _check_size(server, tool, arguments)
    try:
        parsed = json.loads(arguments)
    except ValueError as e:
        raise HostError(ErrorCode.INVALID_ARGUMENT, f"arguments are not JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise HostError(ErrorCode.INVALID_ARGUMENT, "arguments must be a JSON object")
    return ToolCallPayload(server=server, tool=tool, arguments=parsed)


def _http_fetch(_store: Any, request: Any) -> Any:
    return _guarded(
        "http-fetch",
        lambda: context.current().http_fetch(_request_from_wit(request)),
        _response_to_wit,
        tagged=True,
        error=_tool_error,
    )


def _list_tools(_store: Any, server: str) -> Any:
    def call() -> list[ToolInfoPayload]:
        _check_size(server)
        return context.current().mcp_list_tools(server)

    return _guarded("list-tools", call, _tool_info_to_wit, tagged=False, error=_tool_error)


def _call_tool(_store: Any, server: str, tool: str, arguments: str) -> Any:
    return _guarded(
        "call-tool",
        lambda: context.current().mcp_call_tool(_call_from_wit(server, tool, arguments)),
        _tool_result_to_wit,
        tagged=True,
        error=_tool_error,
    )


# ---- retrieval (1.4) --------------------------------------------------------------------------
#
# result<collection-info, retrieval-error> is tagged (records both sides); the list results and
# result<_, retrieval-error> are untagged. Metadata and filters travel as JSON text.


def _retrieval_error(code: ErrorCode, message: str) -> Record:
    return _record(code=RETRIEVAL_WIT_CODES.get(code, "engine-error"), message=_text(message[:4000]))


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text) if text else {}
    except ValueError as e:
        raise HostError(ErrorCode.INVALID_ARGUMENT, f"{what} is not JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise HostError(ErrorCode.INVALID_ARGUMENT, f"{what} must be a JSON object")
    return parsed


def _collection_to_wit(c: CollectionInfoPayload) -> Record:
    return _record(
        id=c.id, name=_text(c.name), dimensions=c.dimensions, count=c.count, embedding_model=c.embedding_model
    )


def _embed(_store: Any, model: str | None, texts: list[str]) -> Any:
    def call() -> EmbeddingsPayload:
        _check_size(model or "", *texts)
        return context.current().embed(EmbedPayload(model=model, texts=texts))

    return _guarded(
        "embed",
        call,
        lambda r: [[float(x) for x in v] for v in r.vectors],
        tagged=False,
        error=_retrieval_error,
    )


def _create_collection(_store: Any, name: str) -> Any:
    return _guarded(
        "create-collection",
        lambda: context.current().collection_create(CollectionCreatePayload(name=name)),
        _collection_to_wit,
        tagged=True,
        error=_retrieval_error,
    )


def _list_collections(_store: Any) -> Any:
    return _guarded(
        "list-collections",
        lambda: context.current().collection_list(),
        lambda found: [_collection_to_wit(c) for c in found],
        tagged=False,
        error=_retrieval_error,
    )


def _delete_collection(_store: Any, collection: str) -> Any:
    def call() -> None:
        _check_size(collection)
        context.current().collection_delete(collection)

    return _guarded("delete-collection", call, lambda _: None, tagged=False, error=_retrieval_error)


def _add_texts(_store: Any, collection: str, items: Any) -> Any:
    def call() -> list[str]:
        _check_size(collection, *(t for i in items for t in (i.id or "", i.text, i.metadata)))
        payload = AddTextsPayload(
            collection=collection,
            items=[
                TextItemPayload(id=i.id, text=i.text, metadata=_json_object(i.metadata, "metadata"))
                for i in items
            ],
        )
        return context.current().collection_add_texts(payload)

    return _guarded("add-texts", call, list, tagged=False, error=_retrieval_error)


def _search(
    _store: Any, collection: str, query: str, k: int, where: str | None, threshold: float | None
) -> Any:
    def call() -> list[HitPayload]:
        _check_size(collection, query, where or "")
        payload = SearchPayload(
            collection=collection,
            query=query,
            k=k,
            filter=None if where is None else _json_object(where, "filter"),
            score_threshold=threshold,
        )
        return context.current().collection_search(payload)

    def lower(hits: list[HitPayload]) -> list[Record]:
        return [
            _record(id=_text(h.id), score=float(h.score), text=_text(h.text), metadata=json.dumps(h.metadata))
            for h in hits
        ]

    return _guarded("search", call, lower, tagged=False, error=_retrieval_error)


RETRIEVAL_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "embed": _embed,
    "create-collection": _create_collection,
    "list-collections": _list_collections,
    "delete-collection": _delete_collection,
    "add-texts": _add_texts,
    "search": _search,
}


# ---- pipelines (1.5) --------------------------------------------------------------------------
#
# result<pipeline-run, pipeline-error> is tagged (records both sides); the input travels as JSON text.


def _pipeline_error(code: ErrorCode, message: str) -> Record:
    return _record(code=PIPELINE_WIT_CODES.get(code, "engine-error"), message=_text(message[:4000]))


def _run_to_wit(run: PipelineRunPayload) -> Record:
    return _record(
        id=run.id,
        output=_text(run.output),
        steps=[
            _record(
                name=s.name,
                phase=s.phase,
                attempts=min(s.attempts, _U32_MAX),
                output=None if s.output is None else _text(s.output),
                error=None if s.error is None else _text(s.error[:4000]),
                prompt_tokens=min(s.prompt_tokens, _U32_MAX),
                completion_tokens=min(s.completion_tokens, _U32_MAX),
            )
            for s in run.steps
        ],
        prompt_tokens=min(run.prompt_tokens, _U32_MAX),
        completion_tokens=min(run.completion_tokens, _U32_MAX),
    )


def _run_pipeline(_store: Any, name: str, input: str) -> Any:
    def call() -> PipelineRunPayload:
        _check_size(name, input)
        return context.current().run_pipeline(
            PipelineRunRequest(name=name, input=_json_object(input, "input"))
        )

    return _guarded("run-pipeline", call, _run_to_wit, tagged=True, error=_pipeline_error)


PIPELINE_FUNCTIONS: Mapping[str, Callable[..., Any]] = {"run-pipeline": _run_pipeline}


TOOLS_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "http-fetch": _http_fetch,
    "list-tools": _list_tools,
    "call-tool": _call_tool,
}


SAMPLING_FUNCTIONS: Mapping[str, Callable[..., Any]] = {"generate": _sampling_generate}


CONVERSATION_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "create": _conversation_create,
    "get": _conversation_get,
    "put": _conversation_put,
    "delete": _conversation_delete,
}


HOST_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "generate": _host_generate(stream=False),
    "generate-stream": _host_generate(stream=True),
    "encode-tokens": _encode_tokens,
    "decode-tokens": _decode_tokens,
    "load-model-by-name": _load_model_by_name,
    "get-model-version": _get_model_version,
    "input": _input,
    "emit": _emit,
    "log": _log,
}


# ---- linker -----------------------------------------------------------------------------------

_linkers: weakref.WeakKeyDictionary[Engine, Linker] = weakref.WeakKeyDictionary()
_linkers_lock = threading.Lock()


def build_linker(engine: Engine) -> Linker:
    """The engine's Linker: WASI p2 and the `realm:tenant` interfaces, built once per engine.

    Defining the host functions costs more than an instantiation, and a Linker is immutable
    once built (instantiate takes it shared), so one serves every Store and thread.
    """
    with _linkers_lock:
        linker = _linkers.get(engine)
        if linker is None:
            linker = Linker(engine)
            linker.add_wasip2()
            # Defined at the host's version, they also serve imports of older 1.x versions:
            # wasmtime matches semver-compatible interface versions, and an instance that offers
            # more functions than a component imports satisfies it.
            with linker.root() as root:
                with root.add_instance(WIT_HOST_INTERFACE) as host:
                    for name, func in HOST_FUNCTIONS.items():
                        host.add_func(name, func)
                with root.add_instance(WIT_CONVERSATIONS_INTERFACE) as conversations:
                    for name, func in CONVERSATION_FUNCTIONS.items():
                        conversations.add_func(name, func)
                with root.add_instance(WIT_SAMPLING_INTERFACE) as sampling:
                    for name, func in SAMPLING_FUNCTIONS.items():
                        sampling.add_func(name, func)
                with root.add_instance(WIT_TOOLS_INTERFACE) as tools:
                    for name, func in TOOLS_FUNCTIONS.items():
                        tools.add_func(name, func)
                with root.add_instance(WIT_RETRIEVAL_INTERFACE) as retrieval:
                    for name, func in RETRIEVAL_FUNCTIONS.items():
                        retrieval.add_func(name, func)
                with root.add_instance(WIT_PIPELINES_INTERFACE) as pipelines:
                    for name, func in PIPELINE_FUNCTIONS.items():
                        pipelines.add_func(name, func)
            # `realm:tenant/types` has only types: wasmtime checks those structurally, so the
            # linker needs no instance for it.
            _linkers[engine] = linker
        return linker


# ---- checks -----------------------------------------------------------------------------------


def check_names(imports: Collection[str], exports: Collection[str]) -> None:
    """The import/export rules on names alone (check_component adds the export's type).

    - `realm:tenant/host@1.y.z` is required, with y <= ABI_MINOR; every `realm:tenant/*` import
      follows the same version rule (a newer minor means functions this host lacks);
    - besides those, only the WASI p2 interfaces the linker provides;
    - `run` must be exported.
    """
    too_new: list[str] = []
    unknown: list[str] = []
    has_host = False
    for name in sorted(imports):
        m = _IMPORT_NAME.fullmatch(name)
        if m is None:
            unknown.append(name)  # a bare world-level import: nothing of ours has one
            continue
        if f"{m['ns']}:{m['pkg']}" == WIT_PACKAGE:
            v = _SEMVER.fullmatch(m["ver"] or "")
            if v is None or int(v["major"]) != ABI_MAJOR or int(v["minor"]) > ABI_MINOR:
                too_new.append(name)
            elif m["iface"] not in REALM_INTERFACES:
                unknown.append(name)
            elif m["iface"] == "host":
                has_host = True
        elif m["ns"] == "wasi" and m["pkg"] in WASI_PACKAGES and WASI_VERSION.fullmatch(m["ver"] or ""):
            pass
        else:
            unknown.append(name)
    speaks = f"{WIT_PACKAGE}/host@{ABI_MAJOR}.0.0 ..= {ABI_MAJOR}.{ABI_MINOR}.x"
    if too_new:
        raise _failed(
            InvocationErrorCode.ABI_UNSUPPORTED,
            f"the component imports {', '.join(too_new)}; this host speaks {speaks}",
        )
    if unknown:
        raise _failed(
            InvocationErrorCode.UNKNOWN_IMPORT,
            f"the component imports what this host does not provide: {', '.join(unknown)}",
        )
    if not has_host:
        raise _failed(
            InvocationErrorCode.ABI_UNSUPPORTED,
            f"the component does not import {WIT_PACKAGE}/host (this host speaks {speaks})",
        )
    if RUN_EXPORT not in exports:
        raise _failed(
            InvocationErrorCode.MISSING_EXPORT,
            f"the component does not export `{RUN_EXPORT}: func() -> result<_, string>`",
        )


def _is_run_type(ty: object) -> bool:
    return (
        isinstance(ty, FuncType)
        and not ty.params
        and isinstance(ty.result, ResultType)
        and ty.result.ok is None
        and isinstance(ty.result.err, String)
    )


def check_component(engine: Engine, component: Component) -> None:
    """Reject a component this host cannot run, before any Store exists (check_names's rules,
    and `run` must have the WIT type `func() -> result<_, string>`)."""
    ty = component.type
    imports = ty.imports(engine)
    exports = ty.exports(engine)
    check_names(imports.keys(), exports.keys())
    if not _is_run_type(exports[RUN_EXPORT].ty):
        raise _failed(
            InvocationErrorCode.MISSING_EXPORT,
            f"the component's `{RUN_EXPORT}` is not `func() -> result<_, string>`",
        )


# ---- running ----------------------------------------------------------------------------------


def run_component(
    engine: Engine,
    store: Store,
    component: Component,
    *,
    wasi: WasiConfig | None = None,
    keep_store_wasi: bool = False,
) -> None:
    """Instantiate `component` in `store` and call its `run` export once.

    The caller binds the invocation (`context.bound`) and sets fuel and the epoch deadline; a
    trap propagates as the WasmtimeError it is ("wasm trap: interrupt", "... all fuel
    consumed ..."), and the instance is then dead: the Store must not be used again.

    WASI: the Store gets `wasi`, by default a WasiConfig with nothing (no environment,
    arguments, preopened directories or inherited stdio; `log` is the tenant's channel). A
    caller that already called `store.set_wasi` (the runner, to capture stdout/stderr) passes
    `keep_store_wasi=True`: setting it again would replace its config. Never run a component
    in a Store without WASI: wasmtime 50's C API panics and aborts the whole process at the
    guest's first WASI call.
    """
    if not keep_store_wasi:
        store.set_wasi(wasi if wasi is not None else WasiConfig())
    instance = build_linker(engine).instantiate(store, component)
    run = instance.get_func(store, RUN_EXPORT)
    if run is None:
        raise _failed(InvocationErrorCode.MISSING_EXPORT, f"the component does not export `{RUN_EXPORT}`")
    outcome = run(store)
    # result<_, string> lifts untagged: None is ok(()), a str is err(message).
    if outcome is not None:
        raise _failed(InvocationErrorCode.TENANT_ERROR, str(outcome))

"""Request bodies of the OpenAI-compatible endpoints, with OpenAI's field names.

Unknown fields are rejected (`extra="forbid"`): a client that asks for audio or deprecated `functions`
must hear that it did not get them. OpenAI fields that cannot change the completion are accepted
and ignored; each is listed under "Accepted and ignored" below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from realm.runtime.conversations import Message as StoredMessage

StopField = Annotated[str | list[str] | None, Field(None, description="Up to 4 stop strings.")]


def _lone_surrogate(value: object) -> str | None:
    """The first string in a parsed JSON document that UTF-8 cannot encode (JSON's `\\ud800` escape
    parses to one), if any; walked without recursion, as deep as the parser went."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


class RequestBody(BaseModel):
    """A request body: unknown fields and strings with lone surrogates refused. Such a string
    would be refused later anyway, by whatever encodes it (the tokenizer, the conversation store),
    as a 500; here it is the client's 400."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        bad = _lone_surrogate(data)
        if bad is not None:
            raise ValueError(f"strings must be valid Unicode; {bad[:40]!r} holds a lone surrogate")
        return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64)
    # A JSON object as text, as the model wrote it; taken as it is (it is only shown to the model again).
    arguments: str


class ToolCallParam(BaseModel):
    """An assistant message's `tool_calls` entry, as a client sends it back in the history."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=128)
    type: Literal["function"]
    function: FunctionCall


def _content_listed_as_required(schema: dict[str, Any]) -> None:
    # The published schema asks for text `content` on every message, as most messages need; the validator
    # also takes an assistant message with tool_calls whose content is null or left out.
    schema.setdefault("required", []).append("content")
    content = schema.get("properties", {}).get("content", {})
    if "anyOf" in content:
        content["anyOf"] = [s for s in content["anyOf"] if s.get("type") != "null"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_content_listed_as_required)

    # "developer" is OpenAI's newer name for "system"; "function" (the deprecated predecessor of "tool")
    # is refused.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only for an assistant message that carries tool_calls.
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted and ignored: no template we serve renders speaker names
    tool_calls: list[ToolCallParam] | None = Field(None, max_length=128)  # assistant messages only
    # Tool messages: the call they answer (serving refuses one that answers none); ignored on others.
    tool_call_id: str | None = Field(None, min_length=1, max_length=128)
    # Accepted and ignored on assistant messages: OpenAI's clients send a reply back as they got it.
    refusal: str | None = None

    @model_validator(mode="after")
    def _content_of_its_role(self) -> Message:
        # tool_calls count on assistant messages only, tool_call_id on tool messages only (serving reads
        # them so); a tool's result may be empty, an assistant message that calls may have no text.
        if self.role == "tool" or (self.role == "assistant" and self.tool_calls):
            return self
        if not self.text().strip():
            raise ValueError("message content must not be empty")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def stored(self) -> StoredMessage:
        """The message as a conversation stores it: text parts joined into one string."""
        return StoredMessage(role=self.role, content=self.text(), name=self.name)


class StoredTurnMessage(Message):
    """A message a conversation stores (/v1/conversations): text turns only; tool calls and results
    are not kept in conversations."""

    @model_validator(mode="after")
    def _text_only(self) -> StoredTurnMessage:
        if self.role == "tool" or self.tool_calls:
            raise ValueError(
                "conversations store text messages only; tool calls and tool results are not kept"
            )
        return self


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # its shape is checked with the tools (serving/tool_calls.py), naming the tool's index
    description: str | None = Field(None, max_length=8192)
    # None: a function without arguments (an empty object). Checked and compiled in serving.
    parameters: dict[str, Any] | None = None
    # Accepted either way: the arguments are always held to the schema by constrained decoding.
    strict: bool | None = None


class ToolParam(BaseModel):
    """OpenAI's function tool; custom (free-form) tools are not supported."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(BaseModel):
    """OpenAI's `json_schema` object. `schema` is optional in OpenAI's types; here a format without one
    is refused when the request is checked (serving/requests.py), as there is nothing to hold it to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None  # accepted and ignored: the schema, not a prose hint, constrains output
    # `schema` would shadow BaseModel.schema; the wire name is kept by the alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    # Accepted either way: the schema is always enforced by constrained decoding (docs/api.md).
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: `{"type": "text"}` (no constraint), `{"type": "json_object"}` (one JSON
    object) or `{"type": "json_schema", "json_schema": {...}}`. One model rather than a tagged union, so
    an error's `param` is the field's path as the client wrote it (a union puts its tag in the path)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only allowed with it")
        return self


class SamplingFields(RequestBody):
    """Fields both endpoints share; the sampling ones map onto the engine's parameters in
    runtime/serving/requests.py."""

    # `name` or `name@version` (runtime/serving/routing.py checks its shape).
    model: str = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # Not OpenAI's, but vLLM's and llama.cpp server's extensions, which OpenAI SDKs send via extra_body.
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: StopField = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    # vLLM's extension: keep generating past end-of-sequence tokens (benchmarks use it).
    ignore_eos: bool | None = None
    # OpenAI's on chat; on the legacy completions endpoint as vLLM takes it (OpenAI's clients send it
    # there through `extra_body`).
    response_format: ResponseFormat | None = None

    # What a model named without a version is sticky by when there is no conversation and no
    # X-Realm-Route-Key (docs/versions.md); it does not change what is generated.
    user: str | None = Field(None, max_length=256)
    # Accepted and ignored: they do not change what is generated.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v and any(not -100.0 <= b <= 100.0 for b in v.values()):
            raise ValueError("logit_bias values must be between -100 and 100")
        return v

    def constrained_format(self) -> ResponseFormat | None:
        """The response format that constrains the output; None for none or `text`."""
        fmt = self.response_format
        return None if fmt is None or fmt.type == "text" else fmt

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> Any:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Tool calling (docs/api.md): function tools, held to their schemas by constrained decoding.
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # True (OpenAI's default): an answer may hold several calls; false: at most one.
    parallel_tool_calls: bool | None = None
    # Realm's extension (the name OpenAI's Responses API uses): continue a stored conversation
    # (/v1/conversations). `messages` are then only the new ones; the stored history goes first,
    # and the new messages and the reply are appended when the completion succeeds.
    conversation: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def uses_tools(self) -> bool:
        """Whether tools, a tool choice, or tool calls and results in the history are part of this request."""
        return (
            bool(self.tools)
            or self.tool_choice is not None
            or any(m.role == "tool" or m.tool_calls for m in self.messages)
        )

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens in OpenAI's API.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    # A string, a list of token ids, or a one-element batch of either; larger batches are rejected.
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _echo(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only best_of=1 is supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        return v

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and v and isinstance(v[0], str | list):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if isinstance(v, str) and not v:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


# The client's key for sticky version picks (docs/versions.md): requests carrying the same key reach the
# same version of a model named without one, on every pod, while the weights stay the same.
ROUTE_KEY_HEADER = "x-realm-route-key"
# Narrows (never widens) what one invocation's tool calls may reach: MCP server names and hosts.
TOOLS_HEADER = "x-realm-tools"
MAX_TOOLS_NAMED = 64
MAX_TOOL_NAME_CHARS = 256


def invocation_tools(headers: Mapping[str, str]) -> frozenset[str] | None:
    """X-Realm-Tools as the set of names it lists (None when absent: the tenant's whole spec; an empty
    value: nothing). Raises ValueError saying what is wrong with it."""
    raw = headers.get(TOOLS_HEADER)
    if raw is None:
        return None
    names = [n.strip().lower() for n in raw.split(",")]
    names = [n for n in names if n]
    if len(names) > MAX_TOOLS_NAMED:
        raise ValueError(f"X-Realm-Tools names more than {MAX_TOOLS_NAMED} servers or hosts")
    for name in names:
        if len(name) > MAX_TOOL_NAME_CHARS or not name.isascii() or not name.isprintable() or " " in name:
            raise ValueError(f"X-Realm-Tools: {name[:64]!r} is not a server name or host")
    return frozenset(names)


def route_key(headers: Mapping[str, str], *, conversation: str | None, user: str | None) -> str | None:
    """What a bare model name's version pick is sticky by: the conversation, else the client's
    X-Realm-Route-Key, else OpenAI's `user` field; None: a fresh draw per request."""
    return conversation or headers.get(ROUTE_KEY_HEADER) or user


class EmbeddingRequest(RequestBody):
    """POST /v1/embeddings, as OpenAI defines it."""

    model: str = Field(..., min_length=1, max_length=256)
    # Token-id arrays are OpenAI's too; they are parsed here to be refused with a clear message.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _texts_only(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not all(isinstance(x, str) for x in v):
            raise ValueError("input must be a string or a list of strings; token ids are not accepted")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else [str(x) for x in self.input]

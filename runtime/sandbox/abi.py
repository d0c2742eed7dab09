"""Host ABI v1: version, error codes and payloads, shared by both bindings.

The WIT package in `wit/tenant.wit` is the source of truth; the core-module binding (`realm`
import module, JSON payloads, pointer/length pairs) mirrors it function for function.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

ABI_MAJOR = 1
# 1.1 added conversations (the `conversations` interface; realm_conversation_* core functions).
# 1.2 added sampling (constraints, logprobs, tenant samplers: `sampling`, `sampler`,
# realm_generate_with, realm_sampler_decide and the optional realm_sampler_step export).
# 1.3 added tools (HTTP fetch and MCP tools under the tenant's egress allowlist: `tools`,
# realm_http_fetch, realm_mcp_list_tools, realm_mcp_call_tool).
# 1.4 added retrieval (embeddings and the tenant's vector collections: `retrieval`, realm_embed,
# realm_collection_create/list/delete/add_texts/search).
# 1.5 added pipelines (the tenant's declared Pipelines run from a module: `pipelines`,
# realm_pipeline_run).
ABI_MINOR = 5
WIT_PACKAGE = "realm:tenant"
WIT_VERSION = f"{ABI_MAJOR}.{ABI_MINOR}.0"
WIT_HOST_INTERFACE = f"{WIT_PACKAGE}/host@{WIT_VERSION}"
WIT_CONVERSATIONS_INTERFACE = f"{WIT_PACKAGE}/conversations@{WIT_VERSION}"
WIT_SAMPLING_INTERFACE = f"{WIT_PACKAGE}/sampling@{WIT_VERSION}"
WIT_SAMPLER_INTERFACE = f"{WIT_PACKAGE}/sampler@{WIT_VERSION}"
WIT_TOOLS_INTERFACE = f"{WIT_PACKAGE}/tools@{WIT_VERSION}"
WIT_RETRIEVAL_INTERFACE = f"{WIT_PACKAGE}/retrieval@{WIT_VERSION}"
WIT_PIPELINES_INTERFACE = f"{WIT_PACKAGE}/pipelines@{WIT_VERSION}"
CORE_IMPORT_MODULE = "realm"
# A core module declares the ABI it speaks by exporting `realm_abi_version() -> i32`
# returning (major << 16) | minor.
CORE_VERSION_EXPORT = "realm_abi_version"
CORE_RUN_EXPORT = "realm_run"
# Optional (1.2): `realm_sampler_step(in_len: i32) -> i32`, the module's own sampler.
CORE_SAMPLER_EXPORT = "realm_sampler_step"

MAX_PAYLOAD_BYTES = 1 << 20  # one host-call argument or result


class ErrorCode(enum.IntEnum):
    """Host-call failures. Core modules get `-code` as the i64 result; components get the
    WIT enum case of the same name (kebab-case)."""

    INVALID_ARGUMENT = 1
    OUT_OF_BOUNDS = 2
    MODEL_NOT_ALLOWED = 3
    MODEL_NOT_FOUND = 4
    QUOTA_EXCEEDED = 5
    ENGINE_ERROR = 6
    TOO_LARGE = 7
    INVALID_UTF8 = 8
    UNSUPPORTED = 9
    NO_RESULT = 10  # core only: realm_result_read with nothing pending
    BUFFER_TOO_SMALL = 11  # core only: realm_result_read into a buffer shorter than the result
    # Since 1.1, conversations (components: the `conversation-error-code` enum).
    NOT_FOUND = 12  # no such conversation for this tenant (another tenant's id included)
    CONFLICT = 13  # the conversation is no longer at the expected version
    UNAVAILABLE = 14  # the conversation store failed or is not configured
    # Since 1.2, sampling (components: the `sampling-error-code` enum).
    INVALID_CONSTRAINT = 15  # the constraint does not compile (bad schema, regex or grammar)
    SAMPLER_TIMEOUT = 16  # the module's sampler passed its per-step time or fuel budget
    SAMPLER_TRAP = 17  # the module's sampler trapped, or the module exports no sampler
    SAMPLER_INVALID = 18  # the module's sampler answered wrongly
    # Since 1.3, tools (components: the `tool-error-code` enum; not-found is NOT_FOUND, too-large
    # TOO_LARGE).
    DENIED = 19  # not on the allowlist, a forbidden address, a server or tool not allowed here
    UNREACHABLE = 20  # could not connect; TLS or protocol failure
    TIMED_OUT = 21  # the call's time, or the invocation's deadline, ran out
    LIMIT_EXCEEDED = 22  # over the invocation's tool calls or egress bytes
    TOOL_FAILED = 23  # the MCP server answered with an error of its own
    # Since 1.4, retrieval (components: the `retrieval-error-code` enum; not-found is NOT_FOUND for a
    # collection, quota-exceeded QUOTA_EXCEEDED for the Tenant's spec.vectors limits and rate quotas).
    # Since 1.5, pipelines (components: the `pipeline-error-code` enum; not-found is NOT_FOUND for a
    # pipeline, timed-out TIMED_OUT for a step's or the pipeline's timeoutSeconds).

    @property
    def wit_name(self) -> str:
        return self.name.lower().replace("_", "-")


# The cases of the WIT `conversation-error-code` enum; other codes a conversation call can raise
# are reported to components as the nearest of these.
CONVERSATION_WIT_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid-argument",
    ErrorCode.INVALID_UTF8: "invalid-argument",
    ErrorCode.OUT_OF_BOUNDS: "invalid-argument",
    ErrorCode.TOO_LARGE: "too-large",
    ErrorCode.NOT_FOUND: "not-found",
    ErrorCode.CONFLICT: "conflict",
}

# The cases of the WIT `sampling-error-code` enum; the codes it lacks are reported to components
# as the nearest of these.
SAMPLING_WIT_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid-argument",
    ErrorCode.OUT_OF_BOUNDS: "invalid-argument",
    ErrorCode.INVALID_UTF8: "invalid-argument",
    ErrorCode.MODEL_NOT_ALLOWED: "model-not-allowed",
    ErrorCode.MODEL_NOT_FOUND: "model-not-found",
    ErrorCode.QUOTA_EXCEEDED: "quota-exceeded",
    ErrorCode.ENGINE_ERROR: "engine-error",
    ErrorCode.TOO_LARGE: "too-large",
    ErrorCode.UNSUPPORTED: "unsupported",
    ErrorCode.INVALID_CONSTRAINT: "invalid-constraint",
    ErrorCode.SAMPLER_TIMEOUT: "sampler-timeout",
    ErrorCode.SAMPLER_TRAP: "sampler-trap",
    ErrorCode.SAMPLER_INVALID: "sampler-invalid",
}


# The cases of the WIT `tool-error-code` enum; the codes it lacks are reported to components as
# the nearest of these.
TOOLS_WIT_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid-argument",
    ErrorCode.OUT_OF_BOUNDS: "invalid-argument",
    ErrorCode.INVALID_UTF8: "invalid-argument",
    ErrorCode.DENIED: "denied",
    ErrorCode.UNREACHABLE: "unreachable",
    ErrorCode.TIMED_OUT: "timeout",
    ErrorCode.TOO_LARGE: "too-large",
    ErrorCode.LIMIT_EXCEEDED: "limit-exceeded",
    ErrorCode.QUOTA_EXCEEDED: "limit-exceeded",
    ErrorCode.NOT_FOUND: "not-found",
    ErrorCode.TOOL_FAILED: "tool-failed",
}

# The cases of the WIT `retrieval-error-code` enum; the codes it lacks are reported to components as
# the nearest of these.
RETRIEVAL_WIT_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid-argument",
    ErrorCode.OUT_OF_BOUNDS: "invalid-argument",
    ErrorCode.INVALID_UTF8: "invalid-argument",
    ErrorCode.MODEL_NOT_ALLOWED: "model-not-allowed",
    ErrorCode.MODEL_NOT_FOUND: "model-not-found",
    ErrorCode.NOT_FOUND: "not-found",
    ErrorCode.QUOTA_EXCEEDED: "quota-exceeded",
    ErrorCode.TOO_LARGE: "too-large",
    ErrorCode.UNAVAILABLE: "unavailable",
    ErrorCode.TIMED_OUT: "unavailable",
    ErrorCode.ENGINE_ERROR: "engine-error",
}


class HostError(Exception):
    """A host call the guest made wrongly or that could not be served: the guest sees a code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerateParams(Payload):
    model: str = Field(..., min_length=1)
    prompt: str
    max_tokens: int = Field(64, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = Field(None, ge=0, lt=1 << 64)


class GenerationPayload(Payload):
    """generate's result (the WIT `generation` record)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ModelInfoPayload(Payload):
    name: str
    version: str
    engine: str
    context_length: int
    vocab_size: int
    has_chat_template: bool


ConversationRole = Literal["system", "developer", "user", "assistant"]


class ConversationMessage(Payload):
    role: ConversationRole
    content: str
    name: str | None = Field(None, max_length=64)


class ConversationCreate(Payload):
    """realm_conversation_create's argument."""

    metadata: dict[str, str] = Field(default_factory=dict)
    messages: list[ConversationMessage] = Field(default_factory=list)
    state: str | None = None


class ConversationPut(Payload):
    """realm_conversation_put's argument: one change, applied as version + 1.

    `expected_version` makes it a compare-and-swap (null: onto whatever version is current, which
    is safe for a pure append). `state` absent keeps the state, null clears it; `metadata` absent
    or null keeps it, an object replaces it. A tenant cannot set the KV-snapshot key."""

    id: str = Field(..., min_length=1, max_length=128)
    expected_version: int | None = Field(None, ge=1)
    append: list[ConversationMessage] = Field(default_factory=list)
    state: str | None = None
    metadata: dict[str, str] | None = None

    @property
    def changes_state(self) -> bool:
        return "state" in self.model_fields_set


class ConversationPayload(Payload):
    """A conversation as the guest sees it (realm_conversation_get/create/put's result)."""

    id: str
    version: int
    created_at: int
    updated_at: int
    metadata: dict[str, str]
    messages: list[ConversationMessage]
    state: str | None
    kv_key: str | None


# ---- 1.2: sampling ------------------------------------------------------------------------------

ConstraintType = Literal["json_schema", "json_object", "regex", "lark", "gbnf"]
# Bounds of the sampling payloads: enough for any real use, small enough that one guest cannot
# make the host or the engine hold much on its behalf.
MAX_CONSTRAINT_CHARS = 64 * 1024  # a schema, regex or grammar (serving's own bound as well)
MAX_SAMPLER_CONFIG_BYTES = 4096
MAX_SAMPLER_TOP_K = 64
MAX_LOGPROBS = 20
MAX_SAMPLER_DECISIONS = 256  # decisions in one realm_sampler_decide (= sequences in one step)
MAX_DECISION_TOKENS = 16384  # ids in one allow, bias or force decision
MAX_TOKEN_ID = (1 << 32) - 1


class ConstraintPayload(Payload):
    """The WIT `constraint` variant: `type` is its case, `value` its text ("" for json_object)."""

    type: ConstraintType
    value: str = Field("", max_length=MAX_CONSTRAINT_CHARS)

    @model_validator(mode="after")
    def _value_fits(self) -> ConstraintPayload:
        if self.type == "json_object" and self.value:
            raise ValueError("a json_object constraint has no value")
        if self.type != "json_object" and not self.value:
            raise ValueError(f"a {self.type} constraint needs a value")
        return self


class SamplerSpec(Payload):
    """Hand every step of the generation to the module's exported sampler."""

    config: str = Field("", max_length=MAX_SAMPLER_CONFIG_BYTES)
    top_k: int = Field(..., ge=1, le=MAX_SAMPLER_TOP_K)


class GenerateOptions(Payload):
    constraint: ConstraintPayload | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    sampler: SamplerSpec | None = None
    stream: bool = Field(False, strict=True)


class GenerateWith(Payload):
    """realm_generate_with's argument."""

    params: GenerateParams
    options: GenerateOptions = Field(default_factory=GenerateOptions)


class CandidatePayload(Payload):
    token: int
    logprob: float
    text: str


class GeneratedToken(Payload):
    token: int
    logprob: float
    top: list[CandidatePayload] = Field(default_factory=list)


class GenerationDetail(Payload):
    """realm_generate_with's result (the WIT `generation-detail` record)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens: list[GeneratedToken] = Field(default_factory=list)


class SequenceStepPayload(Payload):
    id: int
    config: str
    step: int
    candidates: list[CandidatePayload]
    tokens: list[int]


class SamplerStepInput(Payload):
    """What realm_sampler_step reads as its pending result (the WIT `sequence-step` list)."""

    steps: list[SequenceStepPayload]


TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]


class TokenBias(Payload):
    token: TokenId
    # -inf (or below -1e30) bans the token; NaN is meaningless.
    bias: float = Field(..., allow_inf_nan=False)


class SampleDecision(Payload):
    kind: Literal["sample"]


class TokenDecision(Payload):
    kind: Literal["token"]
    token: TokenId


class AllowDecision(Payload):
    kind: Literal["allow"]
    tokens: list[TokenId] = Field(..., min_length=1, max_length=MAX_DECISION_TOKENS)


class BiasDecision(Payload):
    kind: Literal["bias"]
    bias: list[TokenBias] = Field(..., max_length=MAX_DECISION_TOKENS)


class ForceDecision(Payload):
    kind: Literal["force"]
    tokens: list[TokenId] = Field(..., min_length=1, max_length=MAX_DECISION_TOKENS)


class StopDecision(Payload):
    kind: Literal["stop"]


DecisionPayload = Annotated[
    SampleDecision | TokenDecision | AllowDecision | BiasDecision | ForceDecision | StopDecision,
    Field(discriminator="kind"),
]


class SamplerDecisions(Payload):
    """realm_sampler_decide's argument: one decision per step of the input, in order."""

    decisions: list[DecisionPayload] = Field(..., max_length=MAX_SAMPLER_DECISIONS)


# ---- 1.3: tools --------------------------------------------------------------------------------

# Bounds of the tools payloads (the whole argument is within MAX_PAYLOAD_BYTES as well).
MAX_URL_CHARS = 8192
MAX_HEADERS = 64
MAX_HEADER_NAME_CHARS = 256
MAX_HEADER_VALUE_CHARS = 8192
MAX_NAME_CHARS = 256  # an MCP server's or tool's name


def _base64(value: object) -> object:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("body must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("body is not valid base64") from None


# Bytes that travel as base64 text in the core binding's JSON.
Base64Body = Annotated[
    bytes,
    BeforeValidator(_base64),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    Field(max_length=MAX_PAYLOAD_BYTES),
]
HeaderName = Annotated[
    str, Field(min_length=1, max_length=MAX_HEADER_NAME_CHARS, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
]
HeaderValue = Annotated[str, Field(max_length=MAX_HEADER_VALUE_CHARS, pattern=r"^[^\r\n\x00]*$")]
Header = tuple[HeaderName, HeaderValue]
ToolName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


class HttpRequestPayload(Payload):
    """realm_http_fetch's argument (the WIT `http-request`): headers as `[name, value]` pairs,
    the body as base64."""

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    url: str = Field(..., min_length=1, max_length=MAX_URL_CHARS)
    headers: list[Header] = Field(default_factory=list, max_length=MAX_HEADERS)
    body: Base64Body = b""


class HttpResponsePayload(Payload):
    """realm_http_fetch's result (the WIT `http-response`)."""

    status: int = Field(..., ge=0, le=65535)
    headers: list[tuple[str, str]]
    body: Base64Body


class ToolInfoPayload(Payload):
    """One entry of realm_mcp_list_tools's result (the WIT `tool-info`, the schema as JSON)."""

    name: str
    description: str
    input_schema: dict[str, Any]


class ToolCallPayload(Payload):
    """realm_mcp_call_tool's argument: `arguments` must be a JSON object."""

    server: ToolName
    tool: ToolName
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResultPayload(Payload):
    """realm_mcp_call_tool's result (the WIT `tool-result`): `content` is the MCP content blocks,
    `text` their text blocks joined."""

    content: list[dict[str, Any]]
    text: str
    is_error: bool


class InvocationErrorCode(enum.StrEnum):
    """Why an invocation as a whole failed (the invoker's error `code`), documented in docs/abi.md."""

    TENANT_ERROR = "tenant_error"  # the module returned an error itself
    TRAP = "wasm_trap"  # unreachable, out-of-bounds memory access, stack overflow, ...
    TIMEOUT = "wasm_timeout"  # wall-clock deadline (epoch interruption)
    FUEL_EXHAUSTED = "wasm_fuel_exhausted"
    MEMORY_LIMIT = "wasm_memory_limit"  # instantiation needs more than the tenant's cap
    RESOURCE_LIMIT = "wasm_resource_limit"  # table or instance limits
    INVALID_MODULE = "wasm_invalid_module"  # not WebAssembly, or does not validate
    UNKNOWN_IMPORT = "wasm_unknown_import"  # imports something the host does not provide
    ABI_UNSUPPORTED = "wasm_abi_unsupported"  # declares an ABI version this host does not speak
    MISSING_EXPORT = "wasm_missing_export"
    NO_MODULE = "wasm_no_module"  # the tenant has no module deployed
    BUSY = "wasm_busy"  # too many invocations in flight
    OUTPUT_LIMIT = "wasm_output_limit"  # emitted more bytes than the invocation may


# ---- 1.4: retrieval ----------------------------------------------------------------------------

# A core result is JSON within MAX_PAYLOAD_BYTES: 64 vectors of 384 floats (about 20 bytes each as
# JSON) fit with room; /v1/embeddings takes 256.
MAX_EMBED_TEXTS = 64
MAX_COLLECTION_ITEMS = 1024
CollectionId = Annotated[str, Field(min_length=1, max_length=64)]
MetadataScalar = str | int | float | bool


class EmbedPayload(Payload):
    """realm_embed's argument: `model` null for the runtime's first embedding model."""

    model: str | None = Field(None, max_length=256)
    texts: list[str] = Field(..., min_length=1, max_length=MAX_EMBED_TEXTS)


class EmbeddingsPayload(Payload):
    """realm_embed's result: one unit-length vector per text, in order."""

    model: str
    vectors: list[list[float]]
    prompt_tokens: int


class CollectionCreatePayload(Payload):
    """realm_collection_create's argument: a collection of the embedding model's vectors."""

    name: str = Field("", max_length=256)
    model: str | None = Field(None, max_length=256)


class CollectionInfoPayload(Payload):
    id: str
    name: str
    dimensions: int
    count: int
    embedding_model: str | None


class TextItemPayload(Payload):
    id: str | None = Field(None, min_length=1, max_length=200)
    text: str = Field(..., min_length=1)
    metadata: dict[Annotated[str, Field(min_length=1, max_length=64)], MetadataScalar] = Field(
        default_factory=dict, max_length=16
    )


class AddTextsPayload(Payload):
    """realm_collection_add_texts's argument; the result is the chunks' ids (`<item id>#<n>`)."""

    collection: CollectionId
    items: list[TextItemPayload] = Field(..., min_length=1, max_length=MAX_COLLECTION_ITEMS)


class SearchPayload(Payload):
    """realm_collection_search's argument: `filter` in OpenAI's vector-store filter shape."""

    collection: CollectionId
    query: str = Field(..., min_length=1)
    k: int = Field(5, ge=1, le=100)
    filter: dict[str, Any] | None = None
    score_threshold: float | None = Field(None, ge=-1.0, le=1.0)


class HitPayload(Payload):
    id: str
    score: float
    text: str
    metadata: dict[str, MetadataScalar]


# ---- 1.5: pipelines ----------------------------------------------------------------------------

# The cases of the WIT `pipeline-error-code` enum; the codes it lacks are reported to components as
# the nearest of these.
PIPELINE_WIT_CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "invalid-argument",
    ErrorCode.OUT_OF_BOUNDS: "invalid-argument",
    ErrorCode.INVALID_UTF8: "invalid-argument",
    ErrorCode.NOT_FOUND: "not-found",
    ErrorCode.MODEL_NOT_ALLOWED: "model-not-allowed",
    ErrorCode.MODEL_NOT_FOUND: "model-not-found",
    ErrorCode.QUOTA_EXCEEDED: "quota-exceeded",
    ErrorCode.TIMED_OUT: "timed-out",
    ErrorCode.TOO_LARGE: "too-large",
    ErrorCode.UNAVAILABLE: "unavailable",
    ErrorCode.ENGINE_ERROR: "engine-error",
}


class PipelineRunRequest(Payload):
    """realm_pipeline_run's argument: the pipeline's name and the run's input (a JSON object)."""

    name: str = Field(..., min_length=1, max_length=253)
    input: dict[str, Any] = Field(default_factory=dict)


class StepResultPayload(Payload):
    name: str
    phase: str
    attempts: int
    output: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int


class PipelineRunPayload(Payload):
    """realm_pipeline_run's result: the run's id, the output step's text and every step's result."""

    id: str
    output: str
    steps: list[StepResultPayload]
    prompt_tokens: int
    completion_tokens: int

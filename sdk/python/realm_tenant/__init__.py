"""Realm tenant SDK for Python: write the orchestration, the runtime serves the models.

A tenant is a WebAssembly component built by componentize-py against the WIT world
`realm:tenant/tenant` (runtime/sandbox/wit/tenant.wit). componentize-py looks for a class
named `WitWorld` in the app module; subclass `Tenant` (or wrap a function with `tenant`):

    import realm_tenant as rt

    class WitWorld(rt.Tenant):
        def handle(self, request):
            g = rt.generate(request["question"], model="smollm2-135m-instruct", max_tokens=32)
            return {"answer": g.text}

`handle` gets the invocation's input as parsed JSON; what it returns (unless None) is emitted
as JSON. Errors it raises fail the invocation with code tenant_error and their message.
Host calls that fail raise `RealmError` with the ABI's error code ("model-not-allowed", ...).

ABI 1.2: `generate_with(params, options)` adds a constraint (`json_schema`, `json_object`,
`regex`, `lark`, `gbnf`), logprobs, or the module's own sampler: a class named `Sampler`
subclassing `realm_tenant.Sampler` in the app module (the component is then built for the
world `tenant-sampler`).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import prompts
from ._backend import (
    KEEP,
    Candidate,
    CollectionInfo,
    Constraint,
    Conversation,
    Decision,
    GeneratedToken,
    GenerateOptions,
    GenerateParams,
    Generation,
    GenerationDetail,
    Hit,
    HttpRequest,
    HttpResponse,
    Keep,
    LogLevel,
    Message,
    ModelInfo,
    PipelineRun,
    RealmError,
    SamplerSpec,
    SequenceStep,
    StepResult,
    ToolInfo,
    ToolResult,
    host,
)
from .prompts import chatml, gemma

__all__ = [
    "KEEP",
    "Candidate",
    "CollectionInfo",
    "Constraint",
    "Conversation",
    "Decision",
    "GenerateOptions",
    "GenerateParams",
    "GeneratedToken",
    "Generation",
    "GenerationDetail",
    "Hit",
    "HttpRequest",
    "HttpResponse",
    "Keep",
    "LogLevel",
    "Message",
    "ModelInfo",
    "PipelineRun",
    "RealmError",
    "Sampler",
    "SamplerSpec",
    "SequenceStep",
    "StepResult",
    "Tenant",
    "ToolInfo",
    "ToolResult",
    "add_texts",
    "allow",
    "ban",
    "bias",
    "call_tool",
    "chatml",
    "create_collection",
    "create_conversation",
    "decode",
    "delete_collection",
    "delete_conversation",
    "dot",
    "embed",
    "emit",
    "emit_json",
    "encode",
    "force",
    "gbnf",
    "gemma",
    "generate",
    "generate_stream",
    "generate_with",
    "get_conversation",
    "http_fetch",
    "input_json",
    "input_text",
    "json_object",
    "json_schema",
    "lark",
    "list_collections",
    "list_tools",
    "load_model",
    "log",
    "model_version",
    "prompts",
    "put_conversation",
    "regex",
    "run_pipeline",
    "sample",
    "search",
    "split_model_version",
    "stop",
    "tenant",
    "token",
]


def _params(
    prompt: str,
    model: str,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stop: Iterable[str],
    seed: int | None,
) -> GenerateParams:
    return GenerateParams(model, prompt, max_tokens, temperature, top_p, top_k, tuple(stop), seed)


def generate(
    prompt: str,
    *,
    model: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: Iterable[str] = (),
    seed: int | None = None,
) -> Generation:
    """A whole completion of `prompt` (raw text: apply the model's chat template yourself,
    e.g. with `chatml` or `gemma`). temperature 0 is greedy. At most 4 stop strings."""
    p = _params(prompt, model, max_tokens, temperature, top_p, top_k, stop, seed)
    return host().generate(p, stream=False)


def generate_stream(
    prompt: str,
    *,
    model: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: Iterable[str] = (),
    seed: int | None = None,
) -> Generation:
    """Like `generate`, and every piece of text also goes to the caller as it is produced
    (the host emits it: do not emit `.text` again unless you want it twice)."""
    p = _params(prompt, model, max_tokens, temperature, top_p, top_k, stop, seed)
    return host().generate(p, stream=True)


def encode(model: str, text: str) -> list[int]:
    return host().encode_tokens(model, text)


def decode(model: str, tokens: Sequence[int]) -> str:
    return host().decode_tokens(model, tokens)


def load_model(name: str) -> ModelInfo:
    """Information about a model this tenant may use (others: RealmError "model-not-allowed")."""
    return host().load_model_by_name(name)


def model_version(name: str) -> str:
    """The version a model reference reaches, with the digest of its weights: `"v2@sha256:<hex>"`.
    `name` may name the version (`"smollm2-135m-instruct@v2"`); a bare name reports the version its
    weights pick for this invocation, the one its `generate` calls naming the bare model reach."""
    return host().get_model_version(name)


def split_model_version(version: str) -> tuple[str, str]:
    """`model_version`'s result as (version name, weights digest): `("v2", "sha256:<hex>")`; a string
    without `@` is all version."""
    name, _, digest = version.partition("@")
    return name, digest


def input_text() -> str:
    """The invocation's input: the HTTP request's JSON body, as text."""
    return host().input()


def input_json() -> Any:
    """The invocation's input parsed as JSON; None when it is empty."""
    text = input_text()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"the input is not JSON: {e}") from None


def emit(chunk: str) -> None:
    """Append text to the invocation's output (sent at once when the caller streams)."""
    host().emit(chunk)


def emit_json(value: Any) -> None:
    emit(json.dumps(value, ensure_ascii=False))


def log(message: str, level: LogLevel = "info") -> None:
    """A line in the runtime's log, attributed to this tenant."""
    host().log(level, message)


# ---- conversations (ABI 1.1) ----------------------------------------------------------------
#
# The tenant's stored conversations, the same ones as the HTTP API's /v1/conversations. Another
# tenant's id fails with RealmError "not-found", like an id that never existed. Every change
# makes version + 1; put_conversation(expected_version=v) is a compare-and-swap: when another
# writer changed the conversation since version v it raises RealmError "conflict" and writes
# nothing (read it again, redo the turn).


def create_conversation(
    *, metadata: dict[str, str] | None = None, messages: Iterable[Message] = (), state: str | None = None
) -> Conversation:
    return host().conversation_create(dict(metadata or {}), tuple(messages), state)


def get_conversation(conversation_id: str) -> Conversation:
    return host().conversation_get(conversation_id)


def put_conversation(
    conversation_id: str,
    *,
    expected_version: int | None = None,
    append: Iterable[Message] = (),
    state: str | Keep | None = KEEP,
    metadata: dict[str, str] | None = None,
) -> Conversation:
    """Apply a change as version + 1: append messages, set (a str) or clear (None) the state,
    replace the metadata. Without `expected_version` it applies to whatever version is current,
    which is safe for a pure append."""
    return host().conversation_put(conversation_id, expected_version, tuple(append), state, metadata)


def delete_conversation(conversation_id: str) -> None:
    host().conversation_delete(conversation_id)


# ---- sampling (ABI 1.2) ----------------------------------------------------------------------


def json_schema(schema: str | dict[str, Any]) -> Constraint:
    """The output is JSON valid against `schema` (a JSON Schema, as text or as a dict)."""
    return Constraint("json_schema", schema if isinstance(schema, str) else json.dumps(schema))


def json_object() -> Constraint:
    """The output is any JSON object."""
    return Constraint("json_object")


def regex(pattern: str) -> Constraint:
    """The whole output matches `pattern`."""
    return Constraint("regex", pattern)


def lark(grammar: str) -> Constraint:
    """The output is in the language of a Lark grammar (llguidance's dialect)."""
    return Constraint("lark", grammar)


def gbnf(grammar: str) -> Constraint:
    """The output is in the language of a GBNF grammar (llama.cpp's dialect)."""
    return Constraint("gbnf", grammar)


def generate_with(params: GenerateParams, options: GenerateOptions | None = None) -> GenerationDetail:
    """`generate` with options: a constraint, logprobs, the module's sampler, streaming.

    Failures of the options are RealmError codes "invalid-constraint", "sampler-timeout",
    "sampler-trap" (also: the module has no Sampler) and "sampler-invalid"."""
    return host().generate_with(params, options or GenerateOptions())


# ---- ABI 1.3: tools ----------------------------------------------------------------------------


def http_fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] | dict[str, str] = (),
    body: bytes | str = b"",
) -> HttpResponse:
    """One HTTP request through the host, to a host on the tenant's egress allowlist (redirects are
    followed by the host, each hop checked). Failures raise RealmError: "denied" (not allowed, or not
    among this invocation's tools), "unreachable", "timeout", "too-large", "limit-exceeded",
    "invalid-argument"."""
    pairs = tuple(headers.items()) if isinstance(headers, dict) else tuple(headers)
    data = body.encode() if isinstance(body, str) else bytes(body)
    return host().http_fetch(HttpRequest(url, method.upper(), pairs, data))


# ---- ABI 1.4: retrieval -------------------------------------------------------------------------


def embed(texts: Sequence[str] | str, *, model: str | None = None) -> list[list[float]]:
    """One unit-length vector per text from the embedding model `model` (the runtime's first one when
    None); a single string gives a list of one."""
    return host().embed(model, [texts] if isinstance(texts, str) else list(texts))


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    """The dot product: the cosine similarity of two unit vectors."""
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


def create_collection(name: str = "") -> CollectionInfo:
    """A new empty collection of the runtime's embedding model's vectors. Over the Tenant's
    spec.vectors.maxCollections: RealmError "quota-exceeded"."""
    return host().create_collection(name)


def list_collections() -> list[CollectionInfo]:
    return host().list_collections()


def delete_collection(collection_id: str) -> None:
    """Another tenant's id, or one that never existed: RealmError "not-found"."""
    host().delete_collection(collection_id)


def add_texts(collection_id: str, items: Sequence[dict[str, Any] | str]) -> list[str]:
    """Chunk, embed and store texts (each a string, or {"text", "id"?, "metadata"?}); returns the
    chunks' ids, "<id>#<n>"."""
    wire: list[tuple[str | None, str, str]] = []
    for item in items:
        if isinstance(item, str):
            wire.append((None, item, "{}"))
        else:
            wire.append((item.get("id"), str(item["text"]), json.dumps(item.get("metadata") or {})))
    return host().add_texts(collection_id, wire)


def search(
    collection_id: str,
    query: str,
    k: int = 5,
    *,
    filter: dict[str, Any] | None = None,
    score_threshold: float | None = None,
) -> list[Hit]:
    """The `k` (1-100) chunks nearest `query`, best first; `filter` in OpenAI's vector-store shape."""
    return host().search(
        collection_id, query, k, None if filter is None else json.dumps(filter), score_threshold
    )


# ---- ABI 1.5: pipelines ---------------------------------------------------------------------------


def run_pipeline(name: str, input: dict[str, Any] | str | None = None) -> PipelineRun:
    """Run the tenant's pipeline `name` to its end with `input` (a JSON object, or a string: then
    `{{input}}` reads it as `{"text": ...}` does). A pipeline that does not run as this tenant is
    RealmError "not-found"; a step's or the pipeline's timeout, "timed-out"; a step's own refusal keeps
    its code ("model-not-allowed", "quota-exceeded", ...) with the step named in the message."""
    data = {"text": input} if isinstance(input, str) else dict(input or {})
    return host().run_pipeline(name, json.dumps(data))


def list_tools(server: str) -> list[ToolInfo]:
    """The tools of the tenant's MCP server `server` that its spec lets the module call. An unknown
    server is RealmError "not-found"; one outside this invocation's tools, "denied"."""
    return host().list_tools(server)


def call_tool(server: str, tool: str, arguments: dict[str, Any] | str | None = None) -> ToolResult:
    """Call `tool` on the MCP server `server`; `arguments` is a JSON object (a dict, or its text).
    A failure of the tool itself is a result with `is_error`; the call failing is RealmError
    ("denied", "not-found", "tool-failed", "timeout", "limit-exceeded", ...)."""
    if arguments is None:
        text = "{}"
    elif isinstance(arguments, str):
        text = arguments
    else:
        text = json.dumps(arguments)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise RealmError("invalid-argument", f"the arguments must be a JSON object, got {text[:40]!r}")
    return host().call_tool(server, tool, text)


_SAMPLE = Decision("sample")
_STOP = Decision("stop")


def sample() -> Decision:
    """Let the built-in sampler choose, with the generation's own parameters."""
    return _SAMPLE


def token(token_id: int) -> Decision:
    """Take this token (it must be allowed by the generation's constraint)."""
    return Decision("token", (token_id,))


def allow(token_ids: Iterable[int]) -> Decision:
    """Sample only among these tokens."""
    return Decision("allow", tuple(token_ids))


BAN = -1e38  # the bias that bans a token


def bias(biases: dict[int, float] | Iterable[tuple[int, float]]) -> Decision:
    """Add these biases to the logits, then sample; `BAN` (or <= -1e30) bans a token."""
    items = biases.items() if isinstance(biases, dict) else biases
    return Decision("bias", bias=tuple((t, max(float(b), BAN)) for t, b in items))


def ban(token_ids: Iterable[int]) -> Decision:
    """Sample as usual, but never these tokens."""
    return Decision("bias", bias=tuple((t, BAN) for t in token_ids))


def force(token_ids: Iterable[int]) -> Decision:
    """Append these tokens now (fast-forward, at least one): the first is this step's token."""
    return Decision("force", tuple(token_ids))


def stop() -> Decision:
    """End the sequence here, finish reason "stop"."""
    return _STOP


class Sampler:
    """Base class for the app's `Sampler` (componentize-py's name for the `sampler` export):
    override `decide`. The host calls it once per engine step with every live sequence of this
    tenant whose generation asked for a sampler (`SamplerSpec`), in an instance of its own (share
    nothing with the handler but `SamplerSpec.config`), under a per-step time and fuel budget.
    Inside it only `log`, `encode`, `decode` and `load_model` work. Leave `step` alone: it is the
    export."""

    def decide(self, steps: Sequence[SequenceStep]) -> Sequence[Decision]:
        """One decision per step, in the same order."""
        raise NotImplementedError("override Sampler.decide(steps)")

    def step(self, steps: list[Any]) -> list[Any]:
        # An exception escaping into componentize-py traps the sampler instance (the host reports
        # sampler-trap to the generation); the traceback goes to the log first.
        try:
            return host().sampler_decisions(self.decide(steps))
        except Exception as e:
            log("".join(traceback.format_exception(e))[-4000:], "error")
            raise


class Tenant:
    """Base class for the app's `WitWorld`: override `handle` (JSON in, JSON out) or `main`
    (raw: read `input_text()`, `emit` what you like). Leave `run` alone: it is the export."""

    def handle(self, request: Any) -> Any:
        raise NotImplementedError("override Tenant.handle(request) or Tenant.main()")

    def main(self) -> None:
        result = self.handle(input_json())
        if result is not None:
            emit_json(result)

    def run(self) -> None:
        # The component's export `run: func() -> result<_, string>`: returning is ok(()), the
        # bindings' Err(message) is err(message). Any other exception escaping into
        # componentize-py would trap the instance instead of failing cleanly, so all of them
        # become err(...) here.
        try:
            self.main()
        except RealmError as e:
            raise host().fail(str(e)) from None
        except Exception as e:
            if type(e).__name__ == "Err":  # already the bindings' error: pass it through
                raise
            log("".join(traceback.format_exception(e))[-4000:], "error")
            raise host().fail(f"{type(e).__name__}: {e}") from None


def tenant(handle: Callable[[Any], Any]) -> type[Tenant]:
    """`WitWorld = tenant(handle)`: a Tenant whose `handle` is this function."""

    class _FunctionTenant(Tenant):
        def handle(self, request: Any) -> Any:
            return handle(request)

    _FunctionTenant.__name__ = _FunctionTenant.__qualname__ = getattr(handle, "__name__", "Tenant")
    return _FunctionTenant

"""Run a tenant's logic on plain CPython, without building a component.

    from realm_tenant.testing import FakeHost
    import app

    host = FakeHost(input={"question": "hi"}, generate=lambda p: "Hello!")
    result = host.run(app.WitWorld)
    assert result.ok and result.json() == {"answer": "Hello!"}

A sampler (ABI 1.2) runs against canned candidates: `FakeHost(sampler=app.Sampler,
candidates=lambda params, tokens: [...])` gives each step's candidates, best first; the fake's
built-in sampler is greedy (it takes the first), and the text is the chosen candidates' texts.

Tools (ABI 1.3): `FakeHost(http=lambda req: ..., mcp={"server": {"tool": fn}})` answers http_fetch
with `http` (a str or an HttpResponse) and MCP calls with the server's functions (a function gets the
arguments dict and returns text or a ToolResult; FakeTool adds a description and schema). A server or
tool it does not have is "not-found"; `tools={"server", "host"}` narrows what the tenant may reach, as
the runtime's X-Realm-Tools header does ("denied" outside it); `host.tool_calls` records each call.
The fake applies no allowlist, address policy or limits.

This checks your code, not the build or the runtime: `realm tenant build` and an invocation
against a runtime (see sdk/python/README.md) do that. The fake does not apply constraints.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _backend
from ._backend import (
    Candidate,
    CollectionInfo,
    Conversation,
    Decision,
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
    SequenceStep,
    StepResult,
    ToolInfo,
    ToolResult,
)

GenerateFn = Callable[[GenerateParams], "str | Generation"]
CandidatesFn = Callable[[GenerateParams, Sequence[int]], Sequence[Candidate]]


@dataclass(frozen=True)
class FakeTool:
    """A fake MCP tool: `fn` gets the call's arguments and returns its text or a ToolResult."""

    fn: Callable[[dict[str, Any]], str | ToolResult]
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


HttpFn = Callable[[HttpRequest], "str | HttpResponse"]


class TenantFailed(Exception):
    """What `run` returning err(message) looks like on CPython."""


@dataclass
class Result:
    ok: bool
    output: str
    error: str | None
    chunks: list[str]
    logs: list[tuple[LogLevel, str]]
    calls: list[GenerateParams]

    def json(self) -> Any:
        return json.loads(self.output)


@dataclass
class FakeHost:
    """A host with canned models. `generate` returns the completion text (or a Generation);
    streaming emits it word by word. Tokens are code points, so encode/decode round-trip."""

    input: Any = None  # a str is passed as is; anything else is JSON-encoded
    generate: GenerateFn = lambda p: ""
    models: dict[str, str] = field(
        default_factory=lambda: {"smollm2-135m-instruct": "1", "gemma-3-270m": "1"}
    )  # allowed model -> version
    chunks: list[str] = field(default_factory=list)
    logs: list[tuple[LogLevel, str]] = field(default_factory=list)
    calls: list[GenerateParams] = field(default_factory=list)
    # The tenant's conversations, by id; versions and compare-and-swap as the runtime does them.
    conversations: dict[str, Conversation] = field(default_factory=dict)
    # ABI 1.2: the app's Sampler class, and the candidates of each step of a sampled generation.
    sampler: type[Any] | None = None
    candidates: CandidatesFn | None = None
    options: list[GenerateOptions] = field(default_factory=list)  # of every generate_with
    # ABI 1.3: the tenant's HTTP endpoint and MCP servers, what this invocation may reach, and the calls.
    http: HttpFn | None = None
    mcp: dict[str, dict[str, FakeTool | Callable[[dict[str, Any]], str | ToolResult]]] = field(
        default_factory=dict
    )
    tools: set[str] | None = None  # None: everything above; else server names and hosts (X-Realm-Tools)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # ("http", url) or (server, tool)
    # ABI 1.4: the tenant's collections by id, each its chunks; search scores them by shared words
    # (a stand-in for embeddings: these tests check a module's logic, not retrieval quality).
    collections: dict[str, list[Hit]] = field(default_factory=dict)
    # ABI 1.5: the tenant's pipelines by name, each a function of the run's input (a dict) to its
    # output text; the runs made, as (name, input).
    pipelines: dict[str, Callable[[dict[str, Any]], str]] = field(default_factory=dict)
    pipeline_runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _generation_ids: int = field(default=0, init=False, repr=False)

    # ---- the Host protocol --------------------------------------------------------------

    def _model(self, reference: str) -> str:
        """The version a model reference reaches: `name@version` names it (with a fake digest), a bare
        name is its entry in `models`."""
        name, _, version = reference.partition("@")
        if name not in self.models:
            raise RealmError("model-not-allowed", f"model {name!r} is not allowed for this tenant")
        return f"{version}@sha256:{'0' * 64}" if version else self.models[name]

    def generate_(self, params: GenerateParams, *, stream: bool) -> Generation:
        self._model(params.model)
        self.calls.append(params)
        out = self.generate(params)
        g = out if isinstance(out, Generation) else Generation(out, "stop", len(params.prompt), len(out))
        if stream:
            for word in g.text.split(" "):
                self.chunks.append(word if not self.chunks or not word else " " + word)
        return g

    def generate_with(self, params: GenerateParams, options: GenerateOptions) -> GenerationDetail:
        self._model(params.model)
        self.calls.append(params)
        self.options.append(options)
        if options.sampler is None:
            g = self.generate_(params, stream=options.stream)
            return GenerationDetail(g.text, g.finish_reason, g.prompt_tokens, g.completion_tokens)
        if self.sampler is None:
            raise RealmError("sampler-trap", "the module exports no sampler")
        if self.candidates is None:
            raise RealmError(
                "unsupported", "FakeHost(candidates=...) gives a sampled generation's candidates"
            )
        self._generation_ids += 1
        text, finish, n = self._sampled(self.sampler(), params, options.sampler.config, options.sampler.top_k)
        if options.stream:
            self.chunks.append(text)
        return GenerationDetail(text, finish, len(params.prompt), n)

    def _sampled(self, sampler: Any, params: GenerateParams, config: str, top_k: int) -> tuple[str, str, int]:
        """Run one sampled generation step by step; its text, finish reason and token count."""
        tokens: list[int] = []
        texts: dict[int, str] = {}
        out: list[str] = []
        while len(tokens) < params.max_tokens:
            cands = list(self.candidates(params, tuple(tokens)) if self.candidates else ())[:top_k]
            if not cands:
                return "".join(out), "stop", len(tokens)
            texts.update((c.token, c.text) for c in cands)
            view = SequenceStep(self._generation_ids, config, len(tokens), tuple(cands), tuple(tokens))
            try:
                decisions = list(sampler.step([view]))
            except Exception as e:
                raise RealmError("sampler-trap", f"the sampler raised {type(e).__name__}: {e}") from e
            if len(decisions) != 1:
                raise RealmError("sampler-invalid", f"{len(decisions)} decisions for 1 step")
            chosen = _apply(decisions[0], cands, texts)
            if chosen is None:
                return "".join(out), "stop", len(tokens)
            for t in chosen:
                tokens.append(t)
                out.append(texts[t])
            text = "".join(out)
            for s in params.stop:
                if s in text:
                    return text[: text.index(s)], "stop", len(tokens)
        return "".join(out), "length", len(tokens)

    def sampler_decisions(self, decisions: Sequence[Decision]) -> list[Any]:
        return list(decisions)

    def _narrowed(self, name: str, what: str) -> None:
        if self.tools is not None and name not in self.tools:
            raise RealmError("denied", f"{what} is not among this invocation's tools")

    def http_fetch(self, request: HttpRequest) -> HttpResponse:
        host = urllib.parse.urlsplit(request.url).hostname or ""
        self._narrowed(host, f"host {host!r}")
        if self.http is None:
            raise RealmError("denied", f"{request.url} is not on the tenant's egress allowlist")
        self.tool_calls.append(("http", request.url))
        out = self.http(request)
        return out if isinstance(out, HttpResponse) else HttpResponse(200, (), out.encode())

    def _tool(self, server: str, tool: str) -> FakeTool:
        self._narrowed(server, f"MCP server {server!r}")
        if server not in self.mcp:
            raise RealmError("not-found", f"no MCP server {server!r} for this tenant")
        if tool not in self.mcp[server]:
            raise RealmError("not-found", f"no tool {tool!r} on MCP server {server!r}")
        t = self.mcp[server][tool]
        return t if isinstance(t, FakeTool) else FakeTool(t, t.__doc__ or "")

    def list_tools(self, server: str) -> list[ToolInfo]:
        self._narrowed(server, f"MCP server {server!r}")
        if server not in self.mcp:
            raise RealmError("not-found", f"no MCP server {server!r} for this tenant")
        return [
            ToolInfo(name, t.description, dict(t.input_schema))
            for name, t in ((n, self._tool(server, n)) for n in self.mcp[server])
        ]

    def call_tool(self, server: str, tool: str, arguments: str) -> ToolResult:
        t = self._tool(server, tool)
        self.tool_calls.append((server, tool))
        out = t.fn(json.loads(arguments))
        if isinstance(out, ToolResult):
            return out
        return ToolResult([{"type": "text", "text": out}], out, False)

    def embed(self, model: str | None, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for t in texts:
            v = [0.0] * 8
            for word in t.lower().split():
                v[sum(word.encode()) % 8] += 1.0
            norm = sum(x * x for x in v) ** 0.5 or 1.0
            out.append([x / norm for x in v])
        return out

    def create_collection(self, name: str) -> CollectionInfo:
        cid = f"vs_{len(self.collections):024x}"
        self.collections[cid] = []
        return CollectionInfo(cid, name, 8, 0, "fake")

    def list_collections(self) -> list[CollectionInfo]:
        return [CollectionInfo(c, "", 8, len(h), "fake") for c, h in self.collections.items()]

    def delete_collection(self, collection_id: str) -> None:
        if self.collections.pop(collection_id, None) is None:
            raise RealmError("not-found", f"no collection {collection_id!r}")

    def add_texts(self, collection_id: str, items: Sequence[tuple[str | None, str, str]]) -> list[str]:
        if collection_id not in self.collections:
            raise RealmError("not-found", f"no collection {collection_id!r}")
        ids = []
        for n, (item_id, text, metadata) in enumerate(items):
            chunk_id = f"{item_id or f'item{n}'}#0"
            self.collections[collection_id].append(Hit(chunk_id, 0.0, text, json.loads(metadata)))
            ids.append(chunk_id)
        return ids

    def run_pipeline(self, name: str, input_json: str) -> PipelineRun:
        if name not in self.pipelines:
            raise RealmError("not-found", f"the pipeline {name!r} does not exist")
        data = json.loads(input_json)
        self.pipeline_runs.append((name, data))
        output = self.pipelines[name](data)
        step = StepResult("output", "Succeeded", 1, output, None, 0, len(output.split()))
        return PipelineRun(f"run-{len(self.pipeline_runs)}", output, [step], 0, step.completion_tokens)

    def search(
        self, collection_id: str, query: str, k: int, filter_json: str | None, threshold: float | None
    ) -> list[Hit]:
        if collection_id not in self.collections:
            raise RealmError("not-found", f"no collection {collection_id!r}")
        words = set(query.lower().split())
        scored = [
            Hit(h.id, len(words & set(h.text.lower().split())) / (len(words) or 1), h.text, h.metadata)
            for h in self.collections[collection_id]
        ]
        scored.sort(key=lambda h: -h.score)
        return [h for h in scored if threshold is None or h.score >= threshold][:k]

    def encode_tokens(self, model: str, text: str) -> list[int]:
        self._model(model)
        return [ord(c) for c in text]

    def decode_tokens(self, model: str, tokens: Sequence[int]) -> str:
        self._model(model)
        return "".join(chr(t) for t in tokens)

    def load_model_by_name(self, name: str) -> ModelInfo:
        return ModelInfo(name, self._model(name), "fake", 2048, 0x110000, True)

    def get_model_version(self, name: str) -> str:
        return self._model(name)

    def input_(self) -> str:
        return self.input if isinstance(self.input, str) else json.dumps(self.input)

    def emit(self, chunk: str) -> None:
        self.chunks.append(chunk)

    def log(self, level: LogLevel, message: str) -> None:
        self.logs.append((level, message))

    def fail(self, message: str) -> Exception:
        return TenantFailed(message)

    def conversation_create(
        self, metadata: dict[str, str], messages: Sequence[Message], state: str | None
    ) -> Conversation:
        cid = f"conv_{len(self.conversations) + 1:012x}{'0' * 20}"
        c = Conversation(cid, 1, 0, 0, dict(metadata), tuple(messages), state, None)
        self.conversations[cid] = c
        return c

    def conversation_get(self, conversation_id: str) -> Conversation:
        if conversation_id not in self.conversations:
            raise RealmError("not-found", f"No conversation found with id '{conversation_id}'.")
        return self.conversations[conversation_id]

    def conversation_put(
        self,
        conversation_id: str,
        expected_version: int | None,
        append: Sequence[Message],
        state: str | Keep | None,
        metadata: dict[str, str] | None,
    ) -> Conversation:
        c = self.conversation_get(conversation_id)
        if expected_version is not None and expected_version != c.version:
            raise RealmError("conflict", f"Conversation '{conversation_id}' is at version {c.version}.")
        updated = Conversation(
            c.id,
            c.version + 1,
            c.created_at,
            c.updated_at,
            c.metadata if metadata is None else dict(metadata),
            (*c.messages, *append),
            c.state if isinstance(state, Keep) else state,
            c.kv_key,
        )
        self.conversations[conversation_id] = updated
        return updated

    def conversation_delete(self, conversation_id: str) -> None:
        self.conversation_get(conversation_id)
        del self.conversations[conversation_id]

    # ---- running a tenant ---------------------------------------------------------------

    def run(self, world: type[Any] | Callable[[], Any]) -> Result:
        """Instantiate the app's WitWorld and call `run`, as the runtime would."""
        previous = _backend.install(_Adapter(self))
        self.chunks.clear()
        error = None
        try:
            world().run()
        except TenantFailed as e:
            error = str(e)
        finally:
            _backend.install(previous)
        return Result(error is None, "".join(self.chunks), error, list(self.chunks), self.logs, self.calls)


def _apply(d: Decision, cands: Sequence[Candidate], texts: dict[int, str]) -> tuple[int, ...] | None:
    """The tokens a decision appends (None: the sequence stops), as the fake's greedy engine sees it."""
    if d.kind == "stop":
        return None
    if d.kind == "sample":
        return (cands[0].token,)
    if d.kind in ("token", "force"):
        unknown = [t for t in d.tokens if t not in texts]
        if not d.tokens or unknown:
            raise RealmError("sampler-invalid", f"{d.kind} of tokens the fake never offered: {unknown}")
        return d.tokens[:1] if d.kind == "token" else d.tokens
    if d.kind == "allow":
        allowed = set(d.tokens)
        best = [c.token for c in cands if c.token in allowed]
        if not best:
            raise RealmError("sampler-invalid", "allow of no candidate the fake offered")
        return (best[0],)
    if d.kind == "bias":
        added = dict(d.bias)
        scored = [
            (c.logprob + added.get(c.token, 0.0), c.token) for c in cands if added.get(c.token, 0.0) > -1e30
        ]
        return (max(scored)[1],) if scored else None
    raise RealmError("sampler-invalid", f"unknown decision kind {d.kind!r}")


class _Adapter:
    """FakeHost's fields `generate` and `input` shadow the protocol's method names."""

    def __init__(self, fake: FakeHost) -> None:
        self._f = fake

    def generate(self, params: GenerateParams, *, stream: bool) -> Generation:
        return self._f.generate_(params, stream=stream)

    def input(self) -> str:
        return self._f.input_()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

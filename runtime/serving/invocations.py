"""A tenant's WebAssembly module invoked with the runtime behind it: the sandbox limits from its
quotas, the host services its calls reach (`RuntimeHostServices`, the sandbox's `HostServices`),
and the invocation's metrics.

A generate from WASM goes through the same model access, limits, sampling mapping, admission and
metrics as an API request; refusals are serving's domain errors, which the sandbox maps to ABI
codes itself (runtime/sandbox/context.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit

import pydantic

from realm.runtime.conversations import UNSET, Conversation
from realm.runtime.conversations import Message as StoredMessage
from realm.runtime.engines.base import MODEL_DIGEST, Constraint, Engine, ModelInfo
from realm.runtime.sandbox.abi import (
    AddTextsPayload,
    CandidatePayload,
    CollectionCreatePayload,
    CollectionInfoPayload,
    ConversationCreate,
    ConversationMessage,
    ConversationPayload,
    ConversationPut,
    EmbeddingsPayload,
    EmbedPayload,
    GeneratedToken,
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    GenerationPayload,
    HitPayload,
    HttpRequestPayload,
    HttpResponsePayload,
    ModelInfoPayload,
    PipelineRunPayload,
    PipelineRunRequest,
    SearchPayload,
    StepResultPayload,
    ToolCallPayload,
    ToolInfoPayload,
    ToolResultPayload,
)
from realm.runtime.sandbox.context import InvocationContext, OutputSink
from realm.runtime.sandbox.runner import (
    InvocationAbandoned,
    InvocationFailed,
    InvocationResult,
    Sandbox,
    SandboxLimits,
    TenantModule,
)
from realm.runtime.sandbox.sampler import NO_SAMPLER, SamplerContext, SamplerFailed, sampler_export
from realm.runtime.scheduler import AdmissionClosed, InvocationsBusy, InvocationSlot
from realm.runtime.spec.runtime_config import ClusterModel, TenantEntry
from realm.runtime.spec.tenant import McpServer, Quotas
from realm.runtime.vectors.filters import Filter
from realm.runtime.vectors.manifests import Manifest

from . import vectors
from .constraints import checked_constraint, local_only
from .conversations import conversation_store
from .egress import EgressBudget, FetchRequest, counted, http_fetch, mcp_authorization, mcp_target
from .embeddings import embed_texts
from .errors import (
    Busy,
    DeadlineExceeded,
    EgressDenied,
    EgressLimit,
    EngineFailed,
    InvalidRequest,
    NoModule,
    NotReady,
    ServingError,
    ToolFailed,
    ToolNotFound,
    Unavailable,
)
from .generation import GenerationStream, complete_text
from .mcp import CheckedTarget, McpEndpoint
from .remote import internal_body, open_remote, remote_for, remote_model, remote_text
from .requests import (
    ServedModel,
    allowed_model,
    configured_tenant,
    max_tokens_within_limits,
    routed_target,
    sampling_params,
    served_here,
    tokenize_text,
)
from .routing import ModelTarget
from .sampling import SamplerTrap, TenantSampler, sampler_error, tenant_samplers
from .state import ServingState

T = TypeVar("T")

# The deadline of a generate called from outside a sandbox run (tests, embedders): none of its own.
REMOTE_DEADLINE_S = 600.0


def version_with_digest(version: str, info: ModelInfo) -> str:
    """What the ABI reports as a model's version: its name and the sha256 of its weights,
    `v2@sha256:<hex>`, so a module can both name the version and pin what it means."""
    digest = info.metadata.get(MODEL_DIGEST) or info.version
    return f"{version}@sha256:{digest}"


def sandbox_limits(quotas: Quotas) -> SandboxLimits:
    """The tenant's WebAssembly quotas as the sandbox's own limits (unset: the sandbox's defaults)."""
    default = SandboxLimits()
    return SandboxLimits(
        memory_mib=quotas.wasm_memory_mib or default.memory_mib,
        fuel=quotas.wasm_fuel_per_invocation,
        deadline_ms=quotas.wasm_time_ms_per_invocation or default.deadline_ms,
        sampler_step_ms=quotas.sampler_step_ms,
        sampler_step_fuel=quotas.sampler_fuel_per_step,
    )


def running_sandbox(state: ServingState) -> Sandbox:
    if state.sandbox is None:
        raise NotReady("The WebAssembly sandbox is not running.", code="loading")
    return state.sandbox


def current_module(state: ServingState, tenant: str) -> TenantModule:
    """The module an invocation starts on now (one deployed meanwhile serves the next)."""
    module = running_sandbox(state).current(tenant)
    if module is None:
        raise NoModule(f"Tenant '{tenant}' has no WebAssembly module deployed.", code="wasm_no_module")
    return module


async def admit_invocation(state: ServingState, tenant: str) -> InvocationSlot | None:
    """Wait for the tenant's turn to run an invocation (None: this state admits everything at once).
    Cancelling the wait (the client left) takes the request out of the queue. Raises Busy, Unavailable."""
    if state.invocations is None:
        return None
    try:
        return await state.invocations.admit(tenant)
    except InvocationsBusy as e:
        state.metrics.wasm_invocations.labels(tenant, "wasm_busy").inc()
        raise Busy(e.message, code="wasm_busy", retry_after=e.retry_after) from e
    except AdmissionClosed as e:
        raise Unavailable(
            "The server is shutting down; retry on another replica.", code="service_unavailable"
        ) from e


async def invoke_module(
    state: ServingState,
    tenant: TenantEntry,
    module: TenantModule,
    input_data: str,
    on_output: OutputSink,
    *,
    route_key: str | None = None,
    tools: frozenset[str] | None = None,
) -> InvocationResult:
    """Run `module` on `input_data` once admitted (see run_admitted). Raises Busy (no slot),
    InvocationFailed. Cancelling it while queued withdraws the request."""
    running_sandbox(state)
    slot = await admit_invocation(state, tenant.name)
    return await run_admitted(
        state, tenant, module, input_data, on_output, slot, route_key=route_key, tools=tools
    )


async def run_admitted(
    state: ServingState,
    tenant: TenantEntry,
    module: TenantModule,
    input_data: str,
    on_output: OutputSink,
    slot: InvocationSlot | None,
    *,
    route_key: str | None = None,
    tools: frozenset[str] | None = None,
) -> InvocationResult:
    """Run `module` on `input_data` in the slot `admit_invocation` gave; `on_output` gets each emitted
    chunk, on the invocation's worker thread (a future it returns holds the module back until it is
    done, at most until the deadline). Raises InvocationFailed.

    `route_key` makes the versions its host calls pick for bare model names sticky (the client's
    X-Realm-Route-Key); without one, the invocation draws a key of its own, so all its calls naming
    one model reach one version. `tools` narrows what its tool calls may reach to these MCP server
    names and hosts (X-Realm-Tools, a Pipeline step's `tools`); None: all the tenant's spec allows.

    The guest cannot be stopped from here (it may be inside a host call): cancelling this lets the
    caller go, while the guest runs to its end or deadline, still holding its slot, output dropped."""
    try:
        sandbox = running_sandbox(state)
    except NotReady:
        if slot is not None:
            slot.release()
        raise
    services = RuntimeHostServices(
        state, route_key=route_key or secrets.token_hex(8), module=module, tools=tools
    )
    ctx = InvocationContext(
        tenant=tenant.name,
        input_data=input_data,
        services=services,
        loop=asyncio.get_running_loop(),
        on_output=on_output,
    )
    # The runner sets the run's deadline when it starts; a cross-pod generate carries what is left of it.
    services.remaining = lambda: ctx.deadline.remaining()
    started = time.perf_counter()
    run = asyncio.ensure_future(sandbox.invoke(module, ctx, sandbox_limits(tenant.spec.quotas)))
    # The slot stands for a busy sandbox thread: freed when the guest returns, not when the caller leaves.
    run.add_done_callback(lambda done: _finished(state, tenant.name, ctx, done, slot, started))
    return await asyncio.shield(run)


def _finished(
    state: ServingState,
    tenant: str,
    ctx: InvocationContext,
    run: asyncio.Future[InvocationResult],
    slot: InvocationSlot | None,
    started: float,
) -> None:
    if slot is not None:
        abandoned = None if run.cancelled() else run.exception()
        if isinstance(abandoned, InvocationAbandoned):
            # Its thread is still asleep: the tenant's slot stays taken until it wakes.
            slot.release_runtime_share()
            abandoned.thread_done.add_done_callback(lambda _: slot.release())
        else:
            slot.release()
    metrics = state.metrics
    outcome = "error"
    if run.cancelled():
        outcome = "cancelled"
    elif (error := run.exception()) is not None:  # retrieved, so a caller who left leaves no warning
        if isinstance(error, InvocationFailed):
            outcome = str(error.code)
    else:
        result = run.result()
        outcome = "success"
        if result.fuel_used is not None:
            metrics.wasm_fuel.labels(tenant).inc(result.fuel_used)
        metrics.wasm_memory_peak.labels(tenant).observe(result.memory_peak_bytes)
    metrics.wasm_wall.labels(tenant).observe(time.perf_counter() - started)
    metrics.wasm_invocations.labels(tenant, outcome).inc()
    for name, n in ctx.host_calls.items():
        metrics.wasm_host_calls.labels(tenant, name).inc(n)


async def _detailed(
    stream: GenerationStream,
    on_text: Callable[[str], None] | None,
    controller: TenantSampler | None,
    *,
    logprobs: bool,
) -> GenerationDetail:
    """Run `stream` to its end like `complete_text`, keeping each token's logprobs when asked; a
    sequence its sampler (or constraint) ended is that failure's error, for the ABI's code."""
    parts: list[str] = []
    tokens: list[GeneratedToken] = []
    try:
        await stream.start()
        async for event in stream.events():
            if event.text:
                parts.append(event.text)
                if on_text is not None:
                    on_text(event.text)
            if logprobs and event.token_id is not None:
                tokens.append(
                    GeneratedToken(
                        token=event.token_id,
                        logprob=event.logprob if event.logprob is not None else 0.0,
                        top=[
                            CandidatePayload(token=t.token_id, logprob=t.logprob, text=t.token)
                            for t in event.top_logprobs
                        ],
                    )
                )
            if event.error_code is not None:
                raise sampler_error(event.error_code, event.error or event.error_code)
            if event.error:
                raise EngineFailed(event.error)
        stream.outcome = "success"
    finally:
        await stream.close()
        if controller is not None:
            # The engine releases what it ran; one it refused or never got is released here.
            controller.release(stream.request_id)
    return GenerationDetail(
        text="".join(parts),
        finish_reason=stream.finish_reason or "stop",
        prompt_tokens=stream.usage.prompt_tokens,
        completion_tokens=stream.usage.completion_tokens,
        tokens=tokens,
    )


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


_FILTER: pydantic.TypeAdapter[Filter] = pydantic.TypeAdapter(Filter)


def _collection_info(m: Manifest) -> CollectionInfoPayload:
    return CollectionInfoPayload(
        id=m.id, name=m.name, dimensions=m.dims, count=m.count, embedding_model=m.model
    )


class RuntimeHostServices:
    """HostServices for one tenant's invocations, backed by the runtime's engines and scheduler."""

    def __init__(
        self,
        state: ServingState,
        *,
        route_key: str | None = None,
        module: TenantModule | None = None,
        tools: frozenset[str] | None = None,
    ) -> None:
        self.state = state
        self.route_key = route_key
        # The invoked module: its own sampler serves the generations that ask for one.
        self.module = module
        # Seconds left to the invocation (its deadline); a cross-pod generate carries it along.
        self.remaining: Callable[[], float] = lambda: REMOTE_DEADLINE_S
        # What this invocation's tool calls may reach, within the tenant's spec (None: all of it).
        self.tools = tools
        # The invocation's outbound calls, bytes and time, shared by http-fetch and MCP calls;
        # made at the first call, when the run's deadline is known.
        self._budget: EgressBudget | None = None

    def _served(self, tenant: str, model: str, *, generates: bool = False) -> tuple[TenantEntry, ServedModel]:
        entry = configured_tenant(self.state, tenant)
        return entry, allowed_model(self.state, entry, model, self.route_key, generates=generates)

    def _routed(
        self, tenant: str, model: str, *, generates: bool = False
    ) -> tuple[TenantEntry, ModelTarget, ClusterModel | None]:
        """The version `model` reaches, and the cluster's entry to call when another pod serves it."""
        entry = configured_tenant(self.state, tenant)
        target = routed_target(self.state, entry, model, self.route_key, generates=generates)
        return entry, target, remote_for(self.state, target)

    def _engine(self, tenant: str, model: str) -> tuple[TenantEntry, Engine]:
        entry, served = self._served(tenant, model)
        return entry, served.engine

    async def generate_text(
        self, tenant: str, params: GenerateParams, on_text: Callable[[str], None] | None
    ) -> GenerationPayload:
        entry, target, remote = self._routed(tenant, params.model, generates=True)
        if remote is not None:
            return await self._generate_remote(tenant, params, remote, on_text)
        served = served_here(self.state, target)
        engine = served.engine
        ids = await tokenize_text(self.state, engine, params.prompt)
        max_tokens = max_tokens_within_limits(engine, entry, len(ids), params.max_tokens, None)
        stream = GenerationStream(
            self.state,
            tenant=tenant,
            model=served.key,
            engine=engine,
            endpoint="wasm",
            prompt_ids=ids,
            params=sampling_params(params, max_tokens=max_tokens),
            arrived=time.perf_counter(),
            id_prefix="wasm",
        )
        done = await complete_text(stream, on_text)
        return GenerationPayload(
            text=done.text,
            finish_reason=done.finish_reason,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
        )

    async def generate_with(
        self,
        tenant: str,
        params: GenerateParams,
        options: GenerateOptions,
        on_text: Callable[[str], None] | None,
    ) -> GenerationDetail:
        entry, target, remote = self._routed(tenant, params.model, generates=True)
        plain = options.constraint is None and options.logprobs is None and options.sampler is None
        if remote is not None:
            if not plain:
                raise local_only(params.model, "a constraint, logprobs or a sampler")
            g = await self._generate_remote(tenant, params, remote, on_text)
            return GenerationDetail(**g.model_dump())
        served = served_here(self.state, target)
        engine = served.engine
        constraint = None
        if options.constraint is not None:
            constraint = checked_constraint(
                engine, Constraint(kind=options.constraint.type, value=options.constraint.value)
            )
        ids = await tokenize_text(self.state, engine, params.prompt)
        max_tokens = max_tokens_within_limits(engine, entry, len(ids), params.max_tokens, None)
        controller = await self._sampler(tenant, entry, served.key, options)
        try:
            if controller is not None:
                try:
                    await asyncio.wrap_future(controller.instance.warm())
                except SamplerFailed as e:
                    raise sampler_error(e.code, e.message) from e
            stream = GenerationStream(
                self.state,
                tenant=tenant,
                model=served.key,
                engine=engine,
                endpoint="wasm",
                prompt_ids=ids,
                params=sampling_params(params, max_tokens=max_tokens, logprobs=options.logprobs),
                arrived=time.perf_counter(),
                id_prefix="wasm",
                constraint=constraint,
                step_controller=controller,
            )
            if controller is not None and options.sampler is not None:
                controller.register(
                    stream.request_id, tenant_samplers(self.state).next_id(tenant), options.sampler.config
                )
        except BaseException:
            if controller is not None:
                tenant_samplers(self.state).abandon(controller)
            raise
        return await _detailed(stream, on_text, controller, logprobs=options.logprobs is not None)

    async def _sampler(
        self, tenant: str, entry: TenantEntry, model: str, options: GenerateOptions
    ) -> TenantSampler | None:
        """The controller of the invoked module's own sampler, when the options ask for it; while
        the module's sampler is backed off, after its wait, if the invocation's deadline allows."""
        if options.sampler is None:
            return None
        module = self.module
        sandbox = running_sandbox(self.state)
        if module is None or sampler_export(sandbox.engine, module) is None:
            raise SamplerTrap(NO_SAMPLER, code="sampler_trap")
        samplers = tenant_samplers(self.state)
        # Other generations of the module may fail meanwhile and lengthen the wait (it ends at a
        # time, not at an event).
        while 0 < (wait := samplers.backed_off_for(module)) < self.remaining():  # noqa: ASYNC110
            await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        services = RuntimeHostServices(self.state, route_key=self.route_key)
        return samplers.controller(
            sandbox=sandbox,
            module=module,
            limits=sandbox_limits(entry.spec.quotas),
            context=lambda: SamplerContext(tenant=tenant, services=services, loop=loop),
            model=model,
            top_k=options.sampler.top_k,
            metrics=self.state.metrics,
        )

    async def _generate_remote(
        self,
        tenant: str,
        params: GenerateParams,
        target: ClusterModel,
        on_text: Callable[[str], None] | None,
    ) -> GenerationPayload:
        """A generate for a model another pod serves (serving/remote.py), within the invocation's deadline."""
        stream = open_remote(
            self.state,
            tenant=configured_tenant(self.state, tenant),
            target=target,
            body=internal_body(
                model=target, fields=params, prompt=params.prompt, max_tokens=params.max_tokens
            ),
            deadline_s=self.remaining(),
            endpoint="wasm",
            id_prefix="wasm",
        )
        text = await remote_text(stream, on_text)
        return GenerationPayload(
            text=text,
            finish_reason=stream.finish_reason or "stop",
            prompt_tokens=stream.usage.prompt_tokens,
            completion_tokens=stream.usage.completion_tokens,
        )

    async def encode_tokens(self, tenant: str, model: str, text: str) -> list[int]:
        _, engine = self._engine(tenant, model)
        return await tokenize_text(self.state, engine, text, add_special=False, param="text")

    async def decode_tokens(self, tenant: str, model: str, tokens: Sequence[int]) -> str:
        _, engine = self._engine(tenant, model)
        vocab = engine.info.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise InvalidRequest(f"token ids must be in [0, {vocab})")
        text: str = engine.decode(list(tokens))
        return text

    async def model_info(self, tenant: str, model: str) -> ModelInfoPayload:
        entry, target, remote = self._routed(tenant, model)
        if remote is not None:
            described = await remote_model(
                self.state, tenant=entry, target=remote, deadline_s=self.remaining()
            )
            return ModelInfoPayload.model_validate(described)
        served = served_here(self.state, target)
        info = served.engine.info
        return ModelInfoPayload(
            name=info.name,
            version=version_with_digest(served.target.version, info),
            engine=info.engine,
            context_length=info.context_length,
            vocab_size=info.vocab_size,
            has_chat_template=info.has_chat_template,
        )

    # ---- conversations (ABI 1.1): the invocation's tenant scopes every call ---------------------

    async def conversation_create(self, tenant: str, params: ConversationCreate) -> ConversationPayload:
        c = await conversation_store(self.state).create(
            tenant, metadata=params.metadata, messages=_stored(params.messages), state=params.state
        )
        return _conversation_payload(c)

    async def conversation_get(self, tenant: str, conversation_id: str) -> ConversationPayload:
        return _conversation_payload(await conversation_store(self.state).get(tenant, conversation_id))

    async def conversation_put(self, tenant: str, params: ConversationPut) -> ConversationPayload:
        c = await conversation_store(self.state).update(
            tenant,
            params.id,
            expected_version=params.expected_version,
            append=_stored(params.append),
            state=params.state if params.changes_state else UNSET,
            metadata=params.metadata if params.metadata is not None else UNSET,
        )
        return _conversation_payload(c)

    async def conversation_delete(self, tenant: str, conversation_id: str) -> None:
        await conversation_store(self.state).delete(tenant, conversation_id)

    # ---- tools (ABI 1.3): egress under the tenant's allowlist, within the invocation's budget ------

    def budget(self, entry: TenantEntry) -> EgressBudget:
        if self._budget is None:
            deadline = time.monotonic() + self.remaining()
            self._budget = EgressBudget.for_invocation(entry.spec.quotas, deadline)
        return self._budget

    def _narrowed(self, name: str, what: str) -> None:
        if self.tools is not None and name not in self.tools:
            raise EgressDenied(
                f"{what} {name!r} is not among the tools this invocation was given (X-Realm-Tools)",
                code="not_given",
            )

    async def http_fetch(self, tenant: str, request: HttpRequestPayload) -> HttpResponsePayload:
        entry = configured_tenant(self.state, tenant)
        if self.tools is not None:
            self._narrowed(_url_host(request.url), "host")
        response = await http_fetch(
            self.state,
            tenant,
            FetchRequest(method=request.method, url=request.url, headers=request.headers, body=request.body),
            budget=self.budget(entry),
        )
        return HttpResponsePayload(status=response.status, headers=response.headers, body=response.body)

    def _server(self, tenant: str, server: str) -> tuple[TenantEntry, McpServer]:
        entry = configured_tenant(self.state, tenant)
        spec = next((s for s in entry.spec.egress.mcp_servers if s.name == server), None)
        if spec is None:
            raise ToolNotFound(f"tenant {tenant!r} has no MCP server {server[:256]!r}")
        self._narrowed(server, "MCP server")
        return entry, spec

    async def _mcp(
        self,
        tenant: str,
        server: str,
        call: Callable[[McpEndpoint, float, int], Awaitable[T]],
        *,
        tool: str | None = None,
    ) -> T:
        """Count and bound one MCP call on the tenant's `server`: a call of the invocation's budget,
        its time (egressTimeoutMs, within the deadline) and the bytes left for its result. A `tool`
        the spec does not allow is refused first, costing nothing."""
        entry, spec = self._server(tenant, server)
        with counted(self.state, tenant, "mcp", server):
            endpoint = McpEndpoint(
                name=spec.name,
                url=spec.url,
                tools=tuple(spec.tools),
                ssl_context=self.state.egress.ssl_context,
            )
            if tool is not None and not endpoint.allows(tool):
                raise EgressDenied(
                    f"tool {tool[:256]!r} of MCP server {server!r} is not allowed for this tenant",
                    code="tool_not_allowed",
                )
            budget = self.budget(entry)
            budget.take_call()
            endpoint = replace(endpoint, authorization=mcp_authorization(tenant, spec))
            try:
                return await call(endpoint, budget.call_deadline() - time.monotonic(), budget.bytes_left)
            except ToolFailed:
                self.state.metrics.egress_requests.labels(tenant, "tool_failed").inc()
                raise

    async def _check(self, tenant: str, server: str, url: str) -> CheckedTarget:
        _, target = await mcp_target(self.state, tenant, server)
        return target

    async def mcp_list_tools(self, tenant: str, server: str) -> list[ToolInfoPayload]:
        async def call(endpoint: McpEndpoint, timeout_s: float, max_bytes: int) -> list[ToolInfoPayload]:
            tools = await self.state.mcp.list_tools(
                tenant, endpoint, check=lambda url: self._check(tenant, server, url), timeout_s=timeout_s
            )
            size = sum(len(t.model_dump_json()) for t in tools)
            budget = self.budget(configured_tenant(self.state, tenant))
            budget.charge(size)
            if size > max_bytes:
                raise EgressLimit(
                    f"MCP server {server!r} listed {size} bytes of tools, over the {max_bytes} left",
                    code="response_too_large",
                )
            return tools

        return await self._mcp(tenant, server, call)

    async def mcp_call_tool(self, tenant: str, call: ToolCallPayload) -> ToolResultPayload:
        async def run(endpoint: McpEndpoint, timeout_s: float, max_bytes: int) -> ToolResultPayload:
            result = await self.state.mcp.call_tool(
                tenant,
                endpoint,
                call.tool,
                call.arguments,
                check=lambda url: self._check(tenant, call.server, url),
                timeout_s=timeout_s,
                max_bytes=max_bytes,
            )
            self.budget(configured_tenant(self.state, tenant)).charge(len(result.model_dump_json()))
            return result

        return await self._mcp(tenant, call.server, run, tool=call.tool)

    # ---- 1.4: retrieval (serving/embeddings.py, serving/vectors.py) -------------------------------

    async def embed(self, tenant: str, params: EmbedPayload) -> EmbeddingsPayload:
        entry = configured_tenant(self.state, tenant)
        result = await embed_texts(self.state, entry, params.model, params.texts)
        return EmbeddingsPayload(
            model=result.model,
            vectors=[[float(x) for x in row] for row in result.vectors],
            prompt_tokens=result.prompt_tokens,
        )

    async def collection_create(self, tenant: str, params: CollectionCreatePayload) -> CollectionInfoPayload:
        entry = configured_tenant(self.state, tenant)
        return _collection_info(
            await vectors.create_collection(self.state, entry, name=params.name, model=params.model)
        )

    async def collection_list(self, tenant: str) -> list[CollectionInfoPayload]:
        entry = configured_tenant(self.state, tenant)
        return [_collection_info(m) for m in await vectors.list_collections(self.state, entry)]

    async def collection_delete(self, tenant: str, collection: str) -> None:
        await vectors.delete_collection(self.state, configured_tenant(self.state, tenant), collection)

    async def collection_add_texts(self, tenant: str, params: AddTextsPayload) -> list[str]:
        entry = configured_tenant(self.state, tenant)
        items = [vectors.TextItem(i.text, dict(i.metadata), i.id) for i in params.items]
        return await vectors.add_texts(self.state, entry, params.collection, items)

    async def collection_search(self, tenant: str, params: SearchPayload) -> list[HitPayload]:
        entry = configured_tenant(self.state, tenant)
        where = None
        if params.filter is not None:
            try:
                where = _FILTER.validate_python(params.filter)
            except pydantic.ValidationError as e:
                raise InvalidRequest(f"filter: {e.errors()[0]['msg']}", code="invalid_filter") from e
        hits = await vectors.search(
            self.state,
            entry,
            params.collection,
            params.query,
            k=params.k,
            where=where,
            threshold=params.score_threshold,
        )
        return [
            HitPayload(id=h.id, score=h.score, text=h.text or "", metadata=dict(h.metadata)) for h in hits
        ]

    # ---- 1.5: pipelines (serving/pipelines.py) ---------------------------------------------------

    async def run_pipeline(self, tenant: str, params: PipelineRunRequest) -> PipelineRunPayload:
        # serving/pipelines.py builds on this module (its generate steps are this class's).
        from .pipelines import execute, failed_step, new_run

        configured_tenant(self.state, tenant)
        run, text_in = new_run(self.state, tenant, params.name, params.input)
        try:
            async with asyncio.timeout(self.remaining()):
                await execute(
                    self.state, run, text_in, route_key=self.route_key, from_module=self.module is not None
                )
        except TimeoutError as e:
            raise DeadlineExceeded(
                "the invocation's deadline passed during the pipeline run", code="invocation_deadline"
            ) from e
        except ServingError as e:
            step = failed_step(run)
            if step is not None:
                e.message = f"step {step}: {e.message}"
            raise
        return PipelineRunPayload(
            id=run.id,
            output=run.output or "",
            steps=[
                StepResultPayload(
                    name=r.name,
                    phase=r.phase,
                    attempts=r.attempts,
                    output=r.output,
                    error=r.error,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                )
                for r in run.steps.values()
            ],
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
        )


def _url_host(url: str) -> str:
    """The host a URL names, as X-Realm-Tools lists hosts (lower case, no port); "" when it has none."""
    return (urlsplit(url).hostname or "").rstrip(".")

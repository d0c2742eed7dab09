"""One attempt of one pipeline step, by kind: what each kind calls and what its output text is.

Every kind reuses the path the same work takes from any other door: a generate step is the ABI's
generate (`RuntimeHostServices.generate_text`, or `generate_with` when it is constrained), an invoke
step is `POST /v1/tenants/{t}/invoke`'s `invoke_module`, a tool step is the ABI's MCP call and a
retrieve step is a vector store search. So a step gets the tenant's quotas, model access, admission
and egress rules with nothing of its own to keep in step. The DAG around it is serving/pipelines.py's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from realm.runtime.sandbox.abi import (
    ConstraintPayload,
    GenerateOptions,
    GenerateParams,
    InvocationErrorCode,
    ToolCallPayload,
)
from realm.runtime.sandbox.modules import InvocationFailed
from realm.runtime.spec.pipeline import PipelineStep

from . import vectors
from .errors import (
    Busy,
    CollectionNotFound,
    DeadlineExceeded,
    InvalidRequest,
    ModuleFailed,
    ToolFailed,
)
from .invocations import RuntimeHostServices, current_module, invoke_module
from .requests import configured_tenant
from .state import ServingState

# Between the hits of a retrieve step's output: a prompt reads them as paragraphs.
HIT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class StepOutput:
    """What one attempt produced: the step's output text and the tokens it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class StepCall:
    """What an attempt needs besides its step: who runs it, its rendered templates, where its text
    streams (the output step, when the run streams), and what it may not do."""

    state: ServingState
    tenant: str
    route_key: str | None
    # Renders one of the step's templates over the run's input and earlier outputs.
    render: Callable[[str], str]
    on_text: Callable[[str], None] | None
    # Seconds the attempt has left (its own and the run's deadlines), for the calls that carry one.
    remaining: Callable[[], float]
    # The run was started by a module (ABI run-pipeline): an invoke step would wait on the tenant's
    # own invocation slots, which the caller holds.
    from_module: bool = False


async def run_attempt(step: PipelineStep, call: StepCall) -> StepOutput:
    """One attempt of `step`. Raises the ServingError of the call it makes."""
    if step.invoke is not None:
        return await _invoke(step, call)
    if step.tool is not None:
        return await _tool(step, call)
    if step.retrieve is not None:
        return await _retrieve(step, call)
    return await _generate(step, call)


def _tools(step: PipelineStep) -> frozenset[str] | None:
    """What the step may reach, as an invocation's X-Realm-Tools narrows it (None: the tenant's all)."""
    return frozenset(step.tools) if step.tools is not None else None


def _services(step: PipelineStep, call: StepCall) -> RuntimeHostServices:
    services = RuntimeHostServices(call.state, route_key=call.route_key, tools=_tools(step))
    services.remaining = call.remaining
    return services


async def _generate(step: PipelineStep, call: StepCall) -> StepOutput:
    assert step.model is not None and step.prompt_template is not None  # a generate step (validated)
    params = GenerateParams(
        model=step.model,
        prompt=call.render(step.prompt_template),
        max_tokens=step.max_tokens,
        temperature=step.temperature,
        top_p=step.top_p,
        top_k=step.top_k,
        seed=step.seed,
    )
    services = _services(step, call)
    if step.response_format is None:
        done = await services.generate_text(call.tenant, params, call.on_text)
        return StepOutput(done.text, done.prompt_tokens, done.completion_tokens)
    constraint = ConstraintPayload(type=step.response_format.type, value=step.response_format.value or "")
    detail = await services.generate_with(
        call.tenant, params, GenerateOptions(constraint=constraint), call.on_text
    )
    return StepOutput(detail.text, detail.prompt_tokens, detail.completion_tokens)


def module_error(e: InvocationFailed) -> Exception:
    """An invocation's failure as the serving error a step records: a full sandbox may pass (Busy), a
    deadline is the step's (DeadlineExceeded), the rest are the module's own (ModuleFailed)."""
    if e.code == InvocationErrorCode.BUSY:
        return Busy(e.message, code=str(e.code), retry_after=1.0)
    if e.code == InvocationErrorCode.TIMEOUT:
        return DeadlineExceeded(e.message, code=str(e.code))
    return ModuleFailed(e.message, code=str(e.code))


async def _invoke(step: PipelineStep, call: StepCall) -> StepOutput:
    assert step.invoke is not None
    if call.from_module:
        raise InvalidRequest(
            f"step {step.name} is an invoke step, which a run started by a module cannot take: the module "
            "would wait on its own invocation",
            code="invoke_in_module_run",
        )
    entry = configured_tenant(call.state, call.tenant)
    module = current_module(call.state, call.tenant)
    payload = json.dumps({k: call.render(v) for k, v in step.invoke.input.items()})
    on_text = call.on_text
    loop = asyncio.get_running_loop()

    def on_output(chunk: str) -> None:  # on the invocation's worker thread
        if on_text is not None:
            loop.call_soon_threadsafe(on_text, chunk)

    try:
        result = await invoke_module(
            call.state, entry, module, payload, on_output, route_key=call.route_key, tools=_tools(step)
        )
    except InvocationFailed as e:
        raise module_error(e) from e
    return StepOutput(result.output)


async def _tool(step: PipelineStep, call: StepCall) -> StepOutput:
    assert step.tool is not None
    arguments = {k: call.render(v) for k, v in step.tool.arguments.items()}
    payload = ToolCallPayload(server=step.tool.server, tool=step.tool.tool, arguments=arguments)
    result = await _services(step, call).mcp_call_tool(call.tenant, payload)
    if result.is_error:
        raise ToolFailed(
            f"tool {step.tool.server}/{step.tool.tool} answered an error: {result.text[:512]}",
            code="tool_error",
        )
    if call.on_text is not None and result.text:
        call.on_text(result.text)
    return StepOutput(result.text)


def collection_id(manifests: Mapping[str, str], wanted: str, tenant: str) -> str:
    """The id of the tenant's collection `wanted` names: an id, else the one collection of that name.
    `manifests` maps ids to names. Raises CollectionNotFound (none; ambiguous names are one error too,
    naming the ids, since guessing would search the wrong one)."""
    if wanted in manifests:
        return wanted
    named = sorted(cid for cid, name in manifests.items() if name == wanted)
    if len(named) == 1:
        return named[0]
    if not named:
        raise CollectionNotFound(
            f"Tenant '{tenant}' has no vector store with id or name '{wanted[:256]}'.",
            code="vector_store_not_found",
        )
    raise CollectionNotFound(
        f"Tenant '{tenant}' has {len(named)} vector stores named '{wanted[:256]}' ({', '.join(named)}); "
        "name one by its id.",
        code="vector_store_name_ambiguous",
    )


async def _retrieve(step: PipelineStep, call: StepCall) -> StepOutput:
    assert step.retrieve is not None
    entry = configured_tenant(call.state, call.tenant)
    spec = step.retrieve
    manifests = {m.id: m.name for m in await vectors.list_collections(call.state, entry)}
    cid = collection_id(manifests, spec.collection, call.tenant)
    hits = await vectors.search(
        call.state, entry, cid, call.render(spec.query), k=spec.k, threshold=spec.score_threshold
    )
    text = HIT_SEPARATOR.join(h.text or "" for h in hits)
    if call.on_text is not None and text:
        call.on_text(text)
    return StepOutput(text)

"""Pipeline runs over HTTP (serving/pipelines.py runs them).

    POST /v1/pipelines/{name}/runs   {input: {...}, stream?: false}  -> the run: output, steps, usage

`stream: true` answers server-sent events: `{"object": "pipeline.run.delta", "delta": "..."}` for
each piece of the output step's text as it is generated, then the run object, then `[DONE]`; a client
that goes away cancels every running step. The API key's tenant scopes the pipeline: another tenant's
pipeline answers 404 like one that does not exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.responses import Response

from realm.runtime.serving.errors import ServingError
from realm.runtime.serving.pipelines import PipelineRunResult, pipeline_of, run_pipeline

from .errors import api_error
from .schemas import RequestBody, route_key
from .sse import DONE, SSEResponse, event
from .state import AppState

router = APIRouter()


class RunPipeline(RequestBody):
    input: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False


def run_object(result: PipelineRunResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "object": "pipeline.run",
        "pipeline": result.pipeline,
        "phase": result.phase,
        "output": result.output,
        "steps": {
            name: {
                "phase": r.phase,
                "output": r.output,
                "error": r.error,
                "error_code": r.error_code,
                "started_s": r.started_s,
                "finished_s": r.finished_s,
                "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
            }
            for name, r in result.steps.items()
        },
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
        "duration_s": result.duration_s,
    }


@router.post("/v1/pipelines/{name}/runs", response_model=None)
async def create_run(name: str, body: RunPipeline, request: Request) -> dict[str, Any] | Response:
    state: AppState = request.app.state.realm
    tenant: str = request.state.tenant.name  # set by the middleware
    key = route_key(request.headers, conversation=None, user=None)
    if not body.stream:
        return run_object(await run_pipeline(state, tenant, name, body.input, route_key=key))
    pipeline_of(state, tenant, name)  # an unknown pipeline is a 404, not an event stream
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.create_task(
        run_pipeline(state, tenant, name, body.input, route_key=key, on_output_text=queue.put_nowait)
    )
    task.add_done_callback(lambda _: queue.put_nowait(None))

    async def events() -> AsyncIterator[bytes]:
        while (piece := await queue.get()) is not None:
            yield event({"object": "pipeline.run.delta", "delta": piece})
        try:
            result = task.result()
        except ServingError as e:
            yield event(api_error(e).body())
        else:
            yield event(run_object(result))
        yield DONE

    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return SSEResponse(events(), on_close=cancel)

"""Pipeline runs over HTTP (serving/pipelines.py runs them).

    POST   /v1/pipelines/{name}/runs        {input: {...}, stream?: false, background?: false}  -> the run
    GET    /v1/pipelines/{name}/runs/{id}   the run as it stands (while it runs, and for a while after)
    DELETE /v1/pipelines/{name}/runs/{id}   cancel it (its running steps); the run as it ended

`stream: true` answers server-sent events: `{"object": "pipeline.run.delta", "delta": "..."}` for
each piece of the output step's text as it is generated, then the run object, then `[DONE]`; a client
that goes away cancels every running step. `background: true` answers at once with the run (phase
Running), to be read with GET. Every answer carries the run's id in `X-Realm-Run-Id`. The API key's
tenant scopes the pipeline and its runs: another tenant's answers 404 like one that does not exist.
A run is kept by the pod that ran it (serving/pipeline_runs.py); a GET or DELETE reaching another pod
is answered through the pod that ran it (serving/pipeline_peers.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.responses import Response

from realm.runtime.serving.errors import InvalidRequest, PipelineNotFound, ServingError
from realm.runtime.serving.pipeline_peers import ask_peers
from realm.runtime.serving.pipeline_runs import PipelineRun
from realm.runtime.serving.pipelines import cancel, execute, new_run, run_of

from .errors import api_error
from .schemas import RequestBody, route_key
from .sse import DONE, SSEResponse, event
from .state import AppState

RUN_ID_HEADER = "X-Realm-Run-Id"

router = APIRouter()


class RunPipeline(RequestBody):
    input: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    background: bool = False


def run_object(run: PipelineRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "object": "pipeline.run",
        "pipeline": run.pipeline,
        "created_at": run.created_at,
        "phase": run.phase,
        "output": run.output,
        "error": {"message": run.error, "code": run.error_code} if run.error is not None else None,
        "steps": {
            name: {
                "phase": r.phase,
                "attempts": r.attempts,
                "output": r.output,
                "error": r.error,
                "error_code": r.error_code,
                "started_s": r.started_s,
                "finished_s": r.finished_s,
                "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
            }
            for name, r in run.steps.items()
        },
        "usage": {
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens,
        },
        "duration_s": run.duration_s,
    }


def _answer(run: PipelineRun, status: int = 200) -> JSONResponse:
    return JSONResponse(run_object(run), status_code=status, headers={RUN_ID_HEADER: run.id})


def _settled(task: asyncio.Task[PipelineRun]) -> None:
    # A background run's failure is in its record; the task's exception is read so it is not reported.
    if not task.cancelled():
        task.exception()


@router.post("/v1/pipelines/{name}/runs", response_model=None)
async def create_run(name: str, body: RunPipeline, request: Request) -> Response:
    state: AppState = request.app.state.realm
    tenant: str = request.state.tenant.name  # set by the middleware
    key = route_key(request.headers, conversation=None, user=None)
    if body.stream and body.background:
        raise api_error(
            InvalidRequest(
                "stream and background cannot both be true.", code="invalid_request", param="stream"
            )
        )
    try:
        run, text_in = new_run(state, tenant, name, body.input)
    except ServingError as e:
        raise api_error(e) from e
    if body.background:
        task = asyncio.create_task(execute(state, run, text_in, route_key=key))
        state.pipeline_runs.start(run, task)
        task.add_done_callback(_settled)
        return _answer(run, 202)
    if not body.stream:
        task = asyncio.create_task(execute(state, run, text_in, route_key=key))
        state.pipeline_runs.start(run, task)
        try:
            return _answer(await task)
        except asyncio.CancelledError:
            if task.cancelled() and not _cancelling():
                return _answer(run)  # cancelled by a DELETE: the run as it ended
            raise
        except ServingError as e:
            raise api_error(e) from e
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.create_task(execute(state, run, text_in, route_key=key, on_output_text=queue.put_nowait))
    state.pipeline_runs.start(run, task)
    task.add_done_callback(lambda _: queue.put_nowait(None))

    async def events() -> AsyncIterator[bytes]:
        while (piece := await queue.get()) is not None:
            yield event({"object": "pipeline.run.delta", "delta": piece})
        if task.cancelled():
            yield event(run_object(run))
        elif isinstance(error := task.exception(), ServingError):
            yield event(api_error(error).body())
        elif error is not None:
            raise error
        else:
            yield event(run_object(run))
        yield DONE

    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return SSEResponse(events(), on_close=cancel, headers={RUN_ID_HEADER: run.id})


def _cancelling() -> bool:
    """Whether the current task (the request's) is being cancelled: its client left."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def _elsewhere(
    state: AppState,
    tenant: str,
    name: str,
    run_id: str,
    action: Literal["get", "delete"],
    missing: ServingError,
) -> Response:
    """The run as the pod that ran it answers (serving/pipeline_peers.py), or `missing`'s 404."""
    found = await ask_peers(state, tenant, name, run_id, action)
    if found is None:
        raise api_error(missing)
    return JSONResponse(found, headers={RUN_ID_HEADER: run_id})


@router.get("/v1/pipelines/{name}/runs/{run_id}", response_model=None)
async def get_run(name: str, run_id: str, request: Request) -> Response:
    state: AppState = request.app.state.realm
    tenant: str = request.state.tenant.name
    try:
        return _answer(run_of(state, tenant, name, run_id))
    except PipelineNotFound as e:
        return await _elsewhere(state, tenant, name, run_id, "get", e)


@router.delete("/v1/pipelines/{name}/runs/{run_id}", response_model=None)
async def cancel_run(name: str, run_id: str, request: Request) -> Response:
    state: AppState = request.app.state.realm
    tenant: str = request.state.tenant.name
    try:
        run = run_of(state, tenant, name, run_id)
    except PipelineNotFound as e:
        return await _elsewhere(state, tenant, name, run_id, "delete", e)
    await cancel(run)
    return _answer(run)

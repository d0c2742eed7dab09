"""Tenant WebAssembly invocations over HTTP.

`POST /v1/tenants/{tenant}/invoke` runs the tenant's current module with the request body as its
input. The response is the module's output: its JSON when the output is JSON, else
`{"output": "<text>"}`; with `Accept: text/event-stream` every emitted chunk is sent as it comes.
`PUT /v1/tenants/{tenant}/module` deploys a new module (hot swap: invocations in flight finish on
the module they started with).

Running the module, and the host services it calls, are the serving layer's
(runtime/serving/invocations.py); here the request is parsed and the result rendered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from realm.runtime.sandbox.runner import InvocationFailed, InvocationResult
from realm.runtime.serving.invocations import (
    admit_invocation,
    current_module,
    invoke_module,
    run_admitted,
    running_sandbox,
)
from realm.runtime.serving.modules import deploy_module
from realm.runtime.spec.runtime_config import TenantEntry

from . import sse
from .disconnect import ClientGone, until_disconnect
from .errors import APIError, invocation_error
from .schemas import invocation_tools, route_key
from .state import AppState

router = APIRouter()

# Outputs longer than this are rendered piece by piece, yielding to the event loop in between.
OUTPUT_PIECE_CHARS = 1 << 16
# Chunks a streamed invocation may have ahead of its reader; then its emits wait for the reader.
STREAM_QUEUE_CHUNKS = 64


def _own_tenant(request: Request, tenant: str) -> tuple[AppState, TenantEntry]:
    entry: TenantEntry = request.state.tenant  # set by the middleware
    if entry.name != tenant:
        raise APIError(
            403, f"This API key belongs to tenant '{entry.name}', not '{tenant}'.", code="wrong_tenant"
        )
    state: AppState = request.app.state.realm
    running_sandbox(state)  # 503 before reading a body there is nothing to run
    return state, entry


def _large_output(output: str, headers: dict[str, str]) -> Response:
    """A large output as the small ones are (its JSON, else `{"output": ...}`), without holding the
    event loop for the whole rendering: other tenants' requests are served between the pieces."""
    try:
        return JSONResponse(json.loads(output), headers=headers)
    except (ValueError, RecursionError):
        pass  # text (or JSON nested too deep to parse or render): rendered below

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"output":"'
        for start in range(0, len(output), OUTPUT_PIECE_CHARS):
            # Escaping a piece alone gives what escaping it inside the whole string would.
            yield json.dumps(output[start : start + OUTPUT_PIECE_CHARS], ensure_ascii=False)[1:-1].encode()
            await asyncio.sleep(0)
        yield b'"}'

    return StreamingResponse(pieces(), media_type="application/json", headers=headers)


@router.put("/v1/tenants/{tenant}/module", response_model=None)
async def deploy(tenant: str, request: Request) -> JSONResponse:
    state, _ = _own_tenant(request, tenant)
    module = await deploy_module(state, tenant, await request.body())
    return JSONResponse(
        {
            "tenant": tenant,
            "sha256": module.sha256,
            "kind": module.kind,
            "abi": ".".join(map(str, module.abi_version)),
        }
    )


@router.post("/v1/tenants/{tenant}/invoke", response_model=None)
async def invoke(tenant: str, request: Request) -> Response:
    state, entry = _own_tenant(request, tenant)
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
        json.loads(text or "null")
    # RecursionError: JSON nested deeper than the parser goes, which is no input a module can be given.
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise APIError(400, "The invocation input must be UTF-8 JSON.", code="invalid_json") from e
    module = current_module(state, tenant)
    headers = {"X-Realm-Module-Sha256": module.sha256}
    key = route_key(request.headers, conversation=None, user=None)
    try:
        tools = invocation_tools(request.headers)
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_tools_header") from None
    if "text/event-stream" not in request.headers.get("accept", ""):
        try:
            # A client that leaves while queued withdraws its request (see invoke_module).
            result = await until_disconnect(
                request,
                lambda: invoke_module(
                    state, entry, module, text, on_output=lambda _: None, route_key=key, tools=tools
                ),
            )
        except ClientGone:
            return Response(status_code=499)
        if len(result.output) > OUTPUT_PIECE_CHARS:
            return _large_output(result.output, headers)
        try:
            return JSONResponse(json.loads(result.output), headers=headers)
        # Not JSON, not JSON a response can carry (NaN), or nested too deep to parse or render: text.
        except (ValueError, RecursionError):
            return JSONResponse({"output": result.output}, headers=headers)

    # Admitted before the stream begins, so that a refusal is a status code (503 wasm_busy), not an event.
    try:
        slot = await until_disconnect(request, lambda: admit_invocation(state, tenant))
    except ClientGone:
        return Response(status_code=499)
    loop = asyncio.get_running_loop()
    # Bounded: a reader slower than the module holds the module back (the sandbox bounds that
    # wait by the invocation's deadline) instead of the queue growing without end.
    chunks: asyncio.Queue[str] = asyncio.Queue(maxsize=STREAM_QUEUE_CHUNKS)
    gone = threading.Event()

    def on_output(chunk: str) -> concurrent.futures.Future[None] | None:  # on the worker thread
        if gone.is_set():
            return None  # the caller left: the output is dropped
        return asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop)

    def observed(t: asyncio.Task[InvocationResult]) -> None:
        # Retrieved here so that a caller who left never leaves an unobserved exception behind.
        if not t.cancelled():
            t.exception()

    # Started here rather than in the body, which may never run: the task is what frees the slot.
    task = asyncio.create_task(
        run_admitted(state, entry, module, text, on_output, slot, route_key=key, tools=tools)
    )
    task.add_done_callback(observed)

    async def events() -> AsyncIterator[bytes]:
        # A caller who leaves does not stop the module (it may be inside a host call): it runs to
        # its end or its deadline, holding its slot, and its output is dropped.
        get: asyncio.Future[str] | None = None
        try:
            while not (task.done() and chunks.empty()):
                get = asyncio.ensure_future(chunks.get())
                await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()  # the module ended: what it queued is still read above
                    continue
                yield sse.event({"chunk": get.result()})
        finally:
            if get is not None and not get.done():
                get.cancel()  # the caller left while we waited
            gone.set()
            while not chunks.empty():  # an emit waiting for room gets it, and returns
                chunks.get_nowait()
            if not task.done():
                task.cancel()
        try:
            result = task.result()
            yield sse.event(
                {"done": True, "host_calls": dict(result.host_calls), "wall_ms": result.wall_s * 1000}
            )
        except InvocationFailed as e:
            yield sse.event(invocation_error(e).body())
        yield sse.DONE

    return sse.SSEResponse(events(), headers=headers)

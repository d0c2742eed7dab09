"""The internal listener: pod-to-pod generations on `ClusterConfig.internalPort`, never the public port.

    POST /internal/v1/generate    header x-realm-credential; body serving/remote.py InternalGenerateBody
    GET  /internal/v1/model       header x-realm-credential: the engine's description of its model
    POST /internal/v1/quota-demand  header x-realm-signature; body and answer serving/quota_exchange.py
                                  DemandReport (each pod's demand for tenants' rate quotas)
    POST /internal/v1/pipeline-run  header x-realm-signature; body serving/pipeline_peers.py RunQuery:
                                  a tenant's pipeline run held here, read or cancelled for a peer

The caller is another runtime pod of the namespace; what it proves is the internal credential
(runtime/peers/credential.py: an HMAC under the namespace secret over the tenant's identity, the model
and version, an expiry and the hop count), never a tenant's API key, which this listener does not
accept. Checked in this order, each refusal an OpenAI-shaped error: the body's size (413), the
credential (401: missing, forged, another namespace's, expired; 400: over the hop limit), the body
(400), the tenant (403 unknown_tenant: not served here under that identity), the model (404
model_not_loaded). The answer is a server-sent-event stream (api/sse.py): `{"text"}` pieces, then
`{"text", "finish_reason", "usage", "server_ms"}` (this pod's own time on the call), or an `{"error"}`
event; its `x-realm-queue-depth` header says how busy the model is here, for the caller's picker. The
generation ends at the credential's expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from realm.runtime.peers.credential import HEADER, CredentialError, InternalCredential
from realm.runtime.peers.signed import SIGNATURE_HEADER
from realm.runtime.serving.errors import ServingError
from realm.runtime.serving.generation import GenerationStream
from realm.runtime.serving.invocations import version_with_digest
from realm.runtime.serving.pipeline_peers import PIPELINE_RUN_PATH, checked_query
from realm.runtime.serving.pipelines import cancel, run_of
from realm.runtime.serving.quota_exchange import DEMAND_PATH, MAX_REPORT_BYTES
from realm.runtime.serving.remote import (
    INTERNAL_MODEL_PATH,
    INTERNAL_PATH,
    QUEUE_DEPTH_HEADER,
    InternalGenerateBody,
    internal_generation,
    internal_model,
    queue_depth,
)

from . import sse
from .disconnect import ClientGone, until_disconnect
from .errors import APIError, api_error, error_body, install_handlers, unavailable
from .middleware import RealmMiddleware, _Held, _replay, _send_error
from .routes_pipelines import run_object
from .state import AppState

router = APIRouter()


class InternalMiddleware:
    """The drain gate, the body bound and the in-flight count of the public listener, without API keys:
    the route checks the internal credential instead."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.draining:
            await _send_error(send, unavailable())
            return
        state.in_flight += 1
        state.idle.clear()
        held = _Held(state)
        try:
            if scope["method"] == "POST":
                buffered = await RealmMiddleware._read_body(scope, receive, state.max_body_bytes, held)
                if isinstance(buffered, APIError):
                    await _send_error(send, buffered)
                    return
                receive = _replay(buffered, receive)
            await self.app(scope, receive, send)
        finally:
            held.release()
            state.in_flight -= 1
            if state.in_flight == 0:
                state.idle.set()


def create_internal_app(state: AppState) -> FastAPI:
    app = FastAPI(title="Realm runtime (internal)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.realm = state
    install_handlers(app)
    app.include_router(router)
    app.add_middleware(InternalMiddleware, state=state)
    return app


def _credential(request: Request, state: AppState) -> InternalCredential:
    try:
        return InternalCredential.verify(request.headers.get(HEADER), state.identity)
    except CredentialError as e:
        status = 400 if e.code == "hop_limit" else 401
        raise APIError(status, e.message, type="authentication_error", code=e.code) from e


def _body(raw: bytes) -> InternalGenerateBody:
    try:
        return InternalGenerateBody.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise APIError(400, f"Invalid internal call: {where}: {first['msg']}", code="invalid_value") from e


@router.post(INTERNAL_PATH, response_model=None)
async def generate(request: Request) -> Response:
    arrived = time.perf_counter()
    state: AppState = request.app.state.realm
    credential = _credential(request, state)
    body = _body(await request.body())
    try:
        gen = await internal_generation(state, credential, body, arrived)
    except ServingError as e:
        raise api_error(e) from e
    # The caller has given up by the credential's expiry: so does the generation.
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, credential.expires - time.time()), gen.engine.cancel, gen.request_id
    )
    streaming = False
    try:
        try:
            await until_disconnect(request, gen.start)
        except ServingError as e:
            raise api_error(e) from e
        headers = {QUEUE_DEPTH_HEADER: str(queue_depth(state, body.model))}
        streaming = True  # the stream's body closes the generation from here on

        async def close() -> None:
            expiry.cancel()
            await gen.close()

        return sse.SSEResponse(_events(gen), on_close=close, headers=headers)
    except ClientGone:
        gen.outcome = "cancelled"
        return Response(status_code=499)
    finally:
        if not streaming:
            expiry.cancel()
            await gen.close()


@router.get(INTERNAL_MODEL_PATH)
async def model(request: Request) -> dict[str, Any]:
    """The engine's description of the model the credential names (the ABI's model info)."""
    state: AppState = request.app.state.realm
    credential = _credential(request, state)
    try:
        served = internal_model(state, credential)
    except ServingError as e:
        raise api_error(e) from e
    info = served.engine.info
    return {
        "name": info.name,
        "version": version_with_digest(served.target.version, info),
        "engine": info.engine,
        "context_length": info.context_length,
        "vocab_size": info.vocab_size,
        "has_chat_template": info.has_chat_template,
    }


@router.post(PIPELINE_RUN_PATH, response_model=None)
async def pipeline_run(request: Request) -> Response:
    """A peer asks for a tenant's run of a pipeline (to read or cancel it) on behalf of the tenant's
    own GET or DELETE, which reached that peer; this pod answers only from its own runs."""
    state: AppState = request.app.state.realm
    raw = await request.body()
    try:
        query = checked_query(state, raw, request.headers.get(SIGNATURE_HEADER))
        run = run_of(state, query.tenant, query.pipeline, query.run)
    except CredentialError as e:
        raise APIError(401, e.message, type="authentication_error", code=e.code) from e
    except ServingError as e:
        raise api_error(e) from e
    if query.action == "delete":
        await cancel(run)
    return JSONResponse(run_object(run))


@router.post(DEMAND_PATH, response_model=None)
async def quota_demand(request: Request) -> Response:
    """A peer's demand for tenants' rate quotas; the answer is this pod's own."""
    state: AppState = request.app.state.realm
    exchange = state.quota_exchange
    if exchange is None:
        raise APIError(404, "This pod exchanges no quota demand.", code="not_found")
    length = request.headers.get("content-length", "")
    # The listener's middleware bounds every body; a report has a tighter bound of its own.
    too_large = length.isdigit() and int(length) > MAX_REPORT_BYTES
    raw = b"" if too_large else await request.body()
    if too_large or len(raw) > MAX_REPORT_BYTES:
        raise APIError(
            413, f"A quota demand report may hold at most {MAX_REPORT_BYTES} bytes.", code="report_too_large"
        )
    try:
        body, signature = exchange.receive(raw, request.headers.get(SIGNATURE_HEADER))
    except CredentialError as e:
        raise APIError(401, e.message, type="authentication_error", code=e.code) from e
    except ServingError as e:
        raise api_error(e) from e
    return Response(body, media_type="application/json", headers={SIGNATURE_HEADER: signature})


async def _events(gen: GenerationStream) -> AsyncIterator[bytes]:
    gen.outcome = "cancelled"  # until the stream completes; a caller leaving leaves it so
    try:
        async for event in gen.events():
            if event.error:
                gen.outcome = "error"
                yield sse.event(error_body(event.error, type="server_error", code="engine_error"))
                return
            if event.finish_reason is None:
                if event.text:
                    yield sse.event({"text": event.text})
                continue
            failure = gen.failure()
            if failure is not None:
                gen.outcome = "error"
                yield sse.event(api_error(failure).body())
                return
            usage = gen.usage
            yield sse.event(
                {
                    "text": event.text,
                    "finish_reason": event.finish_reason,
                    # This pod's own time on the call, so that the caller can tell what the hop added.
                    "server_ms": (time.perf_counter() - gen.arrived) * 1000,
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "cached_tokens": usage.cached_prompt_tokens,
                    },
                }
            )
            gen.outcome = "success"
        yield sse.DONE
    except Exception:
        gen.outcome = "error"
        yield sse.event(error_body("The server had an error while generating.", type="server_error"))
    finally:
        await gen.close()

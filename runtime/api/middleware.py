"""What every request passes before routing: drain gate, API-key auth, body size limit, in-flight count.

A pure ASGI middleware rather than FastAPI dependencies, because dependencies run after the body
is parsed: a client without a valid key must get 401, not a critique of its JSON.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import authenticate
from .errors import APIError, unavailable
from .state import AppState


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    if error.status == 503:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RealmMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.draining:
            await _send_error(send, unavailable())
            return
        try:
            header = dict(scope["headers"]).get(b"authorization")
            tenant = authenticate(header.decode("latin-1") if header else None, state.auth)
        except APIError as e:
            state.metrics.requests.labels("unknown", "unknown", _endpoint(scope), "unauthorized").inc()
            await _send_error(send, e)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        state.in_flight += 1
        state.idle.clear()
        held = _Held(state)
        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # Modules are large (a Python tenant's component is ~18 MB); request bodies are not.
                is_module = str(scope["path"]).endswith("/module")
                limit = state.max_module_bytes if is_module else state.max_body_bytes
                buffered = await self._read_body(scope, receive, limit, held)
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

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive, limit: int, held: _Held) -> bytes | APIError:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _too_large(limit)
        # Buffered whole: bodies are small (limit is a few MiB) and this lets the size check happen
        # before any parsing, whether or not the client declared a length.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return APIError(499, "Client closed the request.", code="client_closed")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _too_large(limit)
            if not held.take(len(chunk)):
                return _buffers_full(held.state.max_buffered_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _Held:
    """One request's share of the bytes all in-flight requests hold buffered (AppState.buffered_bytes),
    given back when the request ends: the replayed body lives as long as the request."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.bytes = 0

    def take(self, n: int) -> bool:
        if self.state.buffered_bytes + n > self.state.max_buffered_bytes:
            return False
        self.state.buffered_bytes += n
        self.bytes += n
        return True

    def release(self) -> None:
        self.state.buffered_bytes -= self.bytes
        self.bytes = 0


def _buffers_full(limit: int) -> APIError:
    return APIError(
        503,
        f"The server holds its limit of {limit} bytes of request bodies in flight; retry shortly.",
        type="service_unavailable",
        code="server_busy",
        retry_after=1,
    )


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large")


def _endpoint(scope: Scope) -> str:
    path = str(scope["path"])
    for name in ("chat", "completions", "models", "invoke", "module"):
        if name in path:
            return name
    return "other"


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body, only a disconnect can arrive: the routes wait on it to notice clients leaving.
        return await receive()

    return replay

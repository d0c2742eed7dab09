"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` chunks, then `data: [DONE]\\n\\n`.

The one writer of event streams for every route (completions, chat, invocations)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """A streaming response that stops, and closes its body iterator, when the client goes away.

    Starlette's StreamingResponse only watches for `http.disconnect` under older ASGI spec
    versions and otherwise leaves an unfinished generator for the garbage collector; here the
    iterator is always closed before the response returns, so the engine sequence behind it is
    cancelled (and its KV freed) at once.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        headers: dict[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(body, background=background)
        self.extra_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        self.stream = body
        # Runs even when the body never started (the client left before the first byte), where
        # closing an unstarted generator would skip its `finally`.
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = False

        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    cancel.cancel()
                    return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_disconnect, tg.cancel_scope)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no"),
                            *self.extra_headers,
                        ],
                    }
                )
                async for chunk in self.stream:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        except* OSError:
            disconnected = True  # the transport broke while sending
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.stream, "aclose", None)
                if aclose is not None:
                    await aclose()
                if self.on_close is not None:
                    await self.on_close()
        if self.background is not None and not disconnected:
            await self.background()

"""Request bodies held by all in-flight requests together stay under RuntimeConfig.server.maxBufferedBytes.

Driven through the real app's ASGI interface with no model loaded: what is under test is the middleware,
which refuses or passes a body before any route runs. The client side (receive/send) is written here
because a slow upload that holds its buffer is exactly what an HTTP client library will not produce.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from realm.runtime.api import AppState, create_app
from realm.runtime.metrics import Metrics
from realm.runtime.spec.runtime_config import RuntimeConfig, ServerConfig, TenantEntry, hash_api_key

KEY = "sk-test-buffers-0123456789"
MIB = 1024 * 1024


def _state() -> AppState:
    tenant = TenantEntry(name="acme", api_key_sha256=[hash_api_key(KEY)])
    config = RuntimeConfig(tenants=[tenant], server=ServerConfig(max_buffered_bytes=MIB))
    return AppState.from_config(config, Metrics())


class _Upload:
    """One POST whose body arrives in the chunks given; after them it waits for `finish` (a slow client),
    then hangs up if the server still asks for more."""

    def __init__(self, chunks: list[bytes], *, more_after: bool) -> None:
        self.chunks = list(chunks)
        self.more_after = more_after
        self.finish = asyncio.Event()
        self.started = asyncio.Event()
        self.status: int | None = None
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            chunk = self.chunks.pop(0)
            more = bool(self.chunks) or self.more_after
            if not self.chunks:
                self.started.set()
            return {"type": "http.request", "body": chunk, "more_body": more}
        await self.finish.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/completions",
            "raw_path": b"/v1/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
        }


def test_bodies_in_flight_together_are_capped_and_released() -> None:
    async def scenario() -> None:
        state = _state()
        app = create_app(state)
        slow = _Upload([b"x" * (700 * 1024)], more_after=True)
        slow_task = asyncio.create_task(app(slow.scope(), slow.receive, slow.send))
        await slow.started.wait()
        await asyncio.sleep(0)
        assert state.buffered_bytes == 700 * 1024

        refused = _Upload([b"y" * (400 * 1024)], more_after=False)
        await app(refused.scope(), refused.receive, refused.send)
        assert refused.status == 503
        error = json.loads(refused.body)["error"]
        assert error["code"] == "server_busy"
        assert str(MIB) in error["message"]

        slow.finish.set()  # the slow client hangs up: its share is given back
        await slow_task
        assert state.buffered_bytes == 0

        passed = _Upload([b"{}"], more_after=False)
        await app(passed.scope(), passed.receive, passed.send)
        assert passed.status == 400  # past the middleware, refused by the route's own parsing
        assert state.buffered_bytes == 0

    asyncio.run(scenario())

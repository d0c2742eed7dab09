"""A real MCP server (the official `mcp` SDK's MCPServer, Streamable HTTP) on a loopback port, for tests.

Its tools: `add(a, b)`, `weather(city)` (canned text), `slow(seconds)` (sleeps, for deadlines),
`fail()` (raises: the tool's error result), `secret()` (not meant to be allowed by any test
tenant). It records every tool call it runs and the Authorization header of every HTTP request,
so tests can check that a refused call sent nothing and that credentials arrive.

    with mcp_server() as server:
        server.url         # http://127.0.0.1:<port>/mcp
        server.calls       # ["add", ...], in the order they ran
        server.auth        # Authorization headers seen (None where absent)
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

WEATHER = "Sunny, 21 degrees"


@dataclass
class McpServerHandle:
    url: str
    calls: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


class _RecordAuth:
    """Records each HTTP request's Authorization header before the MCP app sees it."""

    def __init__(self, app: ASGIApp, seen: list[str | None]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers", []))
            value = headers.get(b"authorization")
            self.seen.append(value.decode() if value is not None else None)
        await self.app(scope, receive, send)


def build_server(handle: McpServerHandle) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("realm-test-tools")

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        handle.calls.append("add")
        return str(a + b)

    @server.tool()
    def weather(city: str) -> str:
        """Today's weather in a city."""
        handle.calls.append("weather")
        return f"{city}: {WEATHER}"

    @server.tool()
    async def slow(seconds: float = 30.0) -> str:
        """Sleep, then answer."""
        handle.calls.append("slow")
        await asyncio.sleep(seconds)
        return "done"

    @server.tool()
    def fail() -> str:
        """Always fails."""
        handle.calls.append("fail")
        raise RuntimeError("the tool failed on purpose")

    @server.tool()
    def secret() -> str:
        """Nothing a test tenant is allowed."""
        handle.calls.append("secret")
        return "classified"

    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def mcp_server() -> Iterator[McpServerHandle]:
    """The server, serving on 127.0.0.1 in a thread until the block ends (then stopped, bounded)."""
    port = _free_port()
    handle = McpServerHandle(url=f"http://127.0.0.1:{port}/mcp")
    app = _RecordAuth(build_server(handle).streamable_http_app(), handle.auth)
    # Open streams (a slow tool, a session's GET stream) get a short grace at shutdown, then are cut.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the MCP server failed to start"
        assert time.monotonic() < end, "the MCP server did not start in 30 s"
        time.sleep(0.02)
    try:
        yield handle
    finally:
        server.should_exit = True
        thread.join(10)

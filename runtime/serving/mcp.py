"""MCP servers a tenant's module reaches (ABI 1.3 `list-tools`, `call-tool`): the official `mcp` SDK's
Streamable HTTP client, one session per (tenant, server) reused across invocations.

What a tenant may reach is decided before any traffic: the server must be one its spec names (else
`ToolNotFound`), the tool one the spec allows on it (else `EgressDenied`, and the server never hears of
the call), and the server's URL must pass the egress checks (the allowlist's address policy: a
session connects only to the addresses `check` returned, through a pinned transport, so a DNS
answer that changes after the check leads nowhere). Nothing of the pod's goes out: no proxy from
the environment, no .netrc; the only credential is the Authorization value the spec names.

Sessions: the SDK's client is a stack of anyio contexts that must be left in the task that entered
them, so each session lives in a task of its own and calls reach it from the invocations' tasks.
A session is closed when it has been idle `idle_s`, when its server's URL or credential changes
(the tenant's spec changed), when it breaks (the next call opens a new one), and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpcore2
import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from realm.runtime.sandbox.abi import ToolInfoPayload, ToolResultPayload
from realm.runtime.spec.tenant import mcp_tool_allowed

from .errors import EgressDenied, EgressFailed, EgressLimit, ToolFailed

log = logging.getLogger("realm.egress")

DEFAULT_IDLE_S = 300.0
# The SDK's own limit on one streamed event; a result larger than the ABI's cap is refused anyway.
MAX_EVENT_BYTES = 4 * 1024 * 1024


class CheckedTarget(Protocol):
    """What the egress checks return for a URL (runtime/egress/checks.py `ResolvedTarget`)."""

    @property
    def addresses(self) -> Sequence[Any]: ...


# The egress checks for one URL: the addresses it may be connected to, or the refusal (a
# ServingError whose reason is egress_denied) when the allowlist or the address policy refuses it.
Check = Callable[[str], Awaitable[CheckedTarget]]


@dataclass(frozen=True)
class McpEndpoint:
    """One MCP server as the tenant's spec names it, its credential resolved."""

    name: str
    url: str
    # Tool names a module may call; empty: none; "*": all.
    tools: tuple[str, ...] = ()
    authorization: str | None = field(default=None, repr=False)
    # The runtime's TLS trust (serving/egress.py's, loaded once); None: the system's default.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def allows(self, tool: str) -> bool:
        return mcp_tool_allowed(self.tools, tool)

    def same_server(self, other: McpEndpoint) -> bool:
        """Whether a session opened for `other` serves this one (the allowed tools are checked per call)."""
        return (self.url, self.authorization) == (other.url, other.authorization)


# ---- a transport that connects only where the checks said ---------------------------------------


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects to the checked addresses of one host:port and refuses every other host; TLS (SNI,
    certificate) still uses the URL's name, because httpcore starts it on the returned stream."""

    def __init__(self, host: str, port: int, addresses: Sequence[str]) -> None:
        self._pin = (host.lower().rstrip("."), port)
        self._addresses = tuple(addresses)
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        if (host.lower().rstrip("."), port) != self._pin:
            raise httpcore2.ConnectError(f"{host}:{port} was not checked: no connection is made to it")
        failure: Exception = httpcore2.ConnectError(f"{host} has no checked address")
        for address in self._addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as e:
                failure = e
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are never reached by egress")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pinned_client(endpoint: McpEndpoint, addresses: Sequence[str]) -> httpx2.AsyncClient:
    url, authorization = endpoint.url, endpoint.authorization
    parsed = httpx2.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    transport = httpx2.AsyncHTTPTransport(trust_env=False, retries=0)
    # httpx2's transport takes no network backend; its pool is replaced by one that has the pinned one.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=endpoint.ssl_context or ssl.create_default_context(),
        network_backend=_PinnedBackend(parsed.host, port, addresses),
        retries=0,
    )
    headers = {"Authorization": authorization} if authorization else None
    return httpx2.AsyncClient(
        transport=transport,
        trust_env=False,
        headers=headers,
        follow_redirects=False,
        timeout=httpx2.Timeout(30.0, read=300.0),
    )


# ---- sessions -----------------------------------------------------------------------------------


class _Session:
    """One open session, entered and left by its own task (`run`)."""

    def __init__(self, endpoint: McpEndpoint) -> None:
        self.endpoint = endpoint
        self.ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.busy = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.broken = False

    async def run(self, addresses: Sequence[str]) -> None:
        try:
            async with (
                _pinned_client(self.endpoint, addresses) as client,
                streamable_http_client(
                    self.endpoint.url, http_client=client, max_sse_event_size=MAX_EVENT_BYTES
                ) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                self.ready.set_result(session)
                await self.stop.wait()
        except BaseException as e:
            self.broken = True
            if not self.ready.done():
                cause = _first_leaf(e)
                self.ready.set_exception(
                    cause if isinstance(cause, Exception) else ConnectionError(str(cause))
                )
            if not isinstance(e, Exception):
                raise


def _first_leaf(e: BaseException) -> BaseException:
    """The first real failure inside anyio's exception groups."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


class McpSessions:
    """The runtime's MCP sessions, per (tenant, server name)."""

    def __init__(self, *, idle_s: float = DEFAULT_IDLE_S) -> None:
        self.idle_s = idle_s
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._lock = asyncio.Lock()

    def open_count(self) -> int:
        return sum(1 for s in self._sessions.values() if not s.broken)

    async def list_tools(
        self, tenant: str, endpoint: McpEndpoint, *, check: Check, timeout_s: float
    ) -> list[ToolInfoPayload]:
        """The server's tools that `endpoint` allows (every page), within `timeout_s`."""
        result: list[ToolInfoPayload] = []

        async def call(session: ClientSession) -> None:
            cursor: str | None = None
            while True:
                page = await (
                    session.list_tools(params={"cursor": cursor})  # type: ignore[arg-type]
                    if cursor
                    else session.list_tools()
                )
                result.extend(
                    ToolInfoPayload(
                        name=t.name, description=t.description or "", input_schema=dict(t.input_schema)
                    )
                    for t in page.tools
                    if endpoint.allows(t.name)
                )
                cursor = page.next_cursor
                if not cursor:
                    return

        await self._use(tenant, endpoint, check, timeout_s, "list_tools", call)
        return result

    async def call_tool(
        self,
        tenant: str,
        endpoint: McpEndpoint,
        tool: str,
        arguments: dict[str, Any],
        *,
        check: Check,
        timeout_s: float,
        max_bytes: int,
    ) -> ToolResultPayload:
        """Call `tool` (refused before any traffic unless `endpoint` allows it) within `timeout_s`;
        a result over `max_bytes` (its JSON) is EgressLimit."""
        if not endpoint.allows(tool):
            raise EgressDenied(
                f"tool {tool!r} of MCP server {endpoint.name!r} is not allowed for this tenant",
                code="tool_not_allowed",
            )
        outcome: list[CallToolResult] = []

        async def call(session: ClientSession) -> None:
            got = await session.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
            if not isinstance(got, CallToolResult):
                raise ToolFailed(f"tool {tool!r} asked for input the runtime cannot give")
            outcome.append(got)

        await self._use(tenant, endpoint, check, timeout_s, f"call_tool {tool}", call)
        got = outcome[0]
        content = [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in got.content]
        text = "\n".join(block.text for block in got.content if isinstance(block, TextContent))
        result = ToolResultPayload(content=content, text=text, is_error=bool(got.is_error))
        size = len(result.model_dump_json())
        if size > max_bytes:
            raise EgressLimit(
                f"tool {tool!r} answered {size} bytes, over the {max_bytes} this invocation may still take",
                code="response_too_large",
            )
        return result

    async def _use(
        self,
        tenant: str,
        endpoint: McpEndpoint,
        check: Check,
        timeout_s: float,
        what: str,
        call: Callable[[ClientSession], Awaitable[None]],
    ) -> None:
        """Run `call` on the tenant's session with the server, opening it if needed, all within
        `timeout_s`. SDK and transport failures become the serving layer's tool errors."""
        started = time.monotonic()
        outcome = "error"
        session: _Session | None = None
        try:
            if timeout_s <= 0:
                raise EgressFailed(f"no time left to reach MCP server {endpoint.name!r}", code="timeout")
            async with asyncio.timeout(timeout_s):
                session = await self._session(tenant, endpoint, check)
                session.busy += 1
                try:
                    await call(await asyncio.shield(session.ready))
                finally:
                    session.busy -= 1
                    self._touch(tenant, endpoint.name, session)
            outcome = "success"
        except TimeoutError:
            outcome = "timeout"
            raise EgressFailed(
                f"MCP server {endpoint.name!r} did not answer {what} within {timeout_s:.3f} s", code="timeout"
            ) from None
        except MCPError as e:
            outcome = "tool_failed"
            raise ToolFailed(f"MCP server {endpoint.name!r}: {e}") from None
        except (httpx2.HTTPError, ConnectionError, OSError) as e:
            outcome = "unreachable"
            await self._drop(tenant, endpoint.name, session)
            raise EgressFailed(
                f"MCP server {endpoint.name!r} could not be reached: {e}", code="unreachable"
            ) from None
        except Exception as e:
            reason = getattr(e, "reason", None)
            outcome = reason if isinstance(reason, str) else "unreachable"
            if reason is not None:
                raise
            await self._drop(tenant, endpoint.name, session)
            raise EgressFailed(
                f"MCP server {endpoint.name!r} failed: {type(e).__name__}: {e}", code="unreachable"
            ) from None
        finally:
            # The call's info line and metrics are serving/egress.py's `counted`; this adds the tool.
            log.debug(
                "egress mcp tenant=%s server=%s call=%s outcome=%s ms=%.1f",
                tenant,
                endpoint.name,
                what,
                outcome,
                (time.monotonic() - started) * 1000,
            )

    async def _session(self, tenant: str, endpoint: McpEndpoint, check: Check) -> _Session:
        key = (tenant, endpoint.name)
        async with self._lock:
            current = self._sessions.get(key)
            if current is not None and (current.broken or not current.endpoint.same_server(endpoint)):
                # Its spec changed (URL or credential) or it broke: the next one starts afresh.
                self._close(key, current)
                current = None
            if current is not None:
                return current
            # Checked on every new session: the allowlist or the spec may have changed since.
            target = await check(endpoint.url)
            session = _Session(endpoint)
            session.task = asyncio.create_task(
                session.run([str(a) for a in target.addresses]), name=f"mcp {tenant}/{endpoint.name}"
            )
            self._sessions[key] = session
            return session

    def _touch(self, tenant: str, name: str, session: _Session) -> None:
        if session.idle_timer is not None:
            session.idle_timer.cancel()
        session.idle_timer = asyncio.get_running_loop().call_later(
            self.idle_s, self._expire, (tenant, name), session
        )

    def _expire(self, key: tuple[str, str], session: _Session) -> None:
        if session.busy == 0 and self._sessions.get(key) is session:
            self._close(key, session)

    async def _drop(self, tenant: str, name: str, session: _Session | None) -> None:
        if session is not None and self._sessions.get((tenant, name)) is session:
            self._close((tenant, name), session)

    def _close(self, key: tuple[str, str], session: _Session) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
        if session.idle_timer is not None:
            session.idle_timer.cancel()
        session.stop.set()
        if not session.ready.done() and session.task is not None:
            session.task.cancel()  # still connecting: nothing to leave politely

    def retain(self, urls: Mapping[tuple[str, str], str]) -> None:
        """Close the sessions whose (tenant, server) is gone or has another URL now (a config reload;
        a changed credential is caught when the session is next used)."""
        for key, session in list(self._sessions.items()):
            if urls.get(key) != session.endpoint.url:
                self._close(key, session)

    async def close(self) -> None:
        """Close every session and wait for them (shutdown), each bounded."""
        sessions = list(self._sessions.items())
        for key, session in sessions:
            self._close(key, session)
        tasks = [s.task for _, s in sessions if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)

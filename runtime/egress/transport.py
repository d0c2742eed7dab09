"""An httpx transport that connects only to addresses already checked, with TLS for the URL's host.

httpx rather than aiohttp: the `mcp` SDK's Streamable HTTP client is built on httpx and takes an
`httpx.AsyncClient`, so this one transport carries a module's `http-fetch` and the tenant's MCP
sessions alike, and httpcore's network-backend seam lets us pick the address without touching TLS:
the connection is made to the pinned IP while SNI and certificate verification use the origin's name.

The pinned backend never resolves anything: a host it holds no pin for is refused, so a redirect,
a proxy setting or a rebinding DNS answer cannot lead a connection anywhere `check_url` did not pass.
"""

from __future__ import annotations

import contextlib
import ssl
import typing
from collections.abc import AsyncIterator, Iterable, Iterator

import httpcore
import httpx

from .checks import ResolvedTarget

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class UnpinnedHost(httpcore.ConnectError):
    """A connection was asked for a host no checked target pinned."""


class PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, targets: Iterable[ResolvedTarget]) -> None:
        self._pins: dict[tuple[str, int], tuple[str, ...]] = {}
        self._inner = httpcore.AnyIOBackend()
        for target in targets:
            self.pin(target)

    def pin(self, target: ResolvedTarget) -> None:
        self._pins[(target.url.host, target.url.port)] = tuple(str(a) for a in target.addresses)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # httpcore hands over the URL's host as written (IPv6 without brackets, lower case).
        addresses = self._pins.get((host.lower().rstrip("."), port))
        if addresses is None:
            raise UnpinnedHost(f"{host}:{port} was not checked: no connection is made to it")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failure = e
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnpinnedHost("unix sockets are never reached by egress")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """httpcore's errors as httpx's, which the MCP SDK and the egress client catch."""
    try:
        yield
    except httpcore.TimeoutException as e:
        raise httpx.TimeoutException(str(e), request=request) from e
    except httpcore.ConnectError as e:
        raise httpx.ConnectError(str(e), request=request) from e
    except httpcore.ProtocolError as e:
        raise httpx.RemoteProtocolError(str(e), request=request) from e
    except httpcore.NetworkError as e:
        raise httpx.NetworkError(str(e), request=request) from e


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class PinnedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to the pinned addresses only; `pin` adds a target (a redirect hop, once checked)."""

    def __init__(self, targets: Iterable[ResolvedTarget], ssl_context: ssl.SSLContext) -> None:
        self.backend = PinnedBackend(targets)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=self.backend, retries=0, http1=True, http2=False
        )

    def pin(self, target: ResolvedTarget) -> None:
        self.backend.pin(target)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def default_ssl_context() -> ssl.SSLContext:
    """Certificate verification and hostname checks on, as for any public endpoint."""
    return httpx.create_ssl_context()

"""One outbound HTTP call: checked, pinned, redirected by hand, bounded in bytes and time.

The caller's headers go out as given except the ones it may not set (`Host`, which would let it name
another virtual host than the one checked, Spin's CVE-2024-32980; hop-by-hop and framing headers,
which are the connection's). Nothing of the pod's is added: no proxy from the environment, no
.netrc, no cookie jar; the request is handed to the pinned transport directly. A redirect is a new
call: its URL is checked and resolved like the first, the caller's Authorization and Cookie are
dropped when it leaves the origin, and after MAX_REDIRECTS it fails. The response body comes back as
it came on the wire (no decompression, so the byte cap counts what was sent), and the whole call,
redirects and slow bodies included, ends at `deadline`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from .checks import EgressPolicy, ResolvedTarget, check_url
from .errors import EgressError, Refused, TimedOut, TooLarge, Unreachable
from .resolver import Resolver
from .transport import PinnedTransport
from .urls import IPAddress

MAX_REDIRECTS = 5
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# RFC 9110's token: what a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # The URL that answered (after redirects), and the targets checked on the way.
    url: str
    hops: tuple[ResolvedTarget, ...] = field(default=())


def checked_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The caller's headers, or Refused naming the first it may not set."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in FORBIDDEN_HEADERS or lowered.startswith("proxy-"):
            raise Refused("forbidden_header", f"header {name!r} is set by the runtime, not the caller")
        # Values in ASCII without CR, LF or NUL: anything else would be encoded by guesswork or split the
        # request.
        if not _TOKEN.match(name) or not value.isascii() or any(c in value for c in "\r\n\0"):
            raise Refused("bad_header", f"header {name[:64]!r} has an invalid name or value")
        out.append((name, value))
    return out


async def fetch(
    policy: EgressPolicy,
    request: Request,
    *,
    resolver: Resolver,
    ssl_context: ssl.SSLContext,
    max_bytes: int,
    deadline: float,
    on_check: Callable[[float], None] | None = None,
) -> Response:
    """Make the call. `max_bytes` bounds the request body plus the response body; `deadline` is a
    time.monotonic() instant by which everything (DNS, connect, TLS, redirects, the body) is done.
    `on_check` is given the seconds each URL's check took (allowlist, resolution, addresses)."""
    method = request.method.upper()
    if method not in METHODS:
        raise Refused(
            "bad_method", f"method {request.method[:32]!r} is not one of {', '.join(sorted(METHODS))}"
        )
    headers = checked_headers(request.headers)
    if len(request.body) > max_bytes:
        raise TooLarge(
            "request_too_large", f"request body of {len(request.body)} bytes over {max_bytes} left"
        )
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimedOut("timeout", "no time left for the call")
    try:
        async with asyncio.timeout(remaining):
            check = _Checker(policy, resolver, on_check)
            return await _follow(method, request, headers, check, ssl_context, max_bytes)
    except TimeoutError:
        raise TimedOut("timeout", f"{request.url[:200]} did not answer within {remaining:.3f} s") from None


async def _follow(
    method: str,
    request: Request,
    headers: list[tuple[str, str]],
    check: _Checker,
    ssl_context: ssl.SSLContext,
    max_bytes: int,
) -> Response:
    target = await check(request.url)
    hops = [target]
    body = request.body
    budget = max_bytes - len(body)
    transport = PinnedTransport([target], ssl_context)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            status, response_headers, response_body = await _send(
                transport, method, str(target.url), headers, body, budget
            )
            location = _header(response_headers, "location")
            if status not in REDIRECTS or location is None:
                return Response(status, response_headers, response_body, str(target.url), tuple(hops))
            budget -= len(response_body)
            next_target = await check(urljoin(str(target.url), location))
            if next_target.url.origin != target.url.origin:
                headers = [(n, v) for n, v in headers if n.lower() not in CREDENTIAL_HEADERS]
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = ("HEAD" if method == "HEAD" else "GET"), b""
            target = next_target
            hops.append(target)
            transport.pin(target)
        raise Unreachable(
            "too_many_redirects", f"more than {MAX_REDIRECTS} redirects from {request.url[:200]}"
        )
    finally:
        await transport.aclose()


@dataclass(frozen=True)
class _Checker:
    policy: EgressPolicy
    resolver: Resolver
    on_check: Callable[[float], None] | None

    async def __call__(self, url: str) -> ResolvedTarget:
        started = time.monotonic()
        try:
            return await check_url(self.policy, url, self.resolver)
        finally:
            if self.on_check is not None:
                self.on_check(time.monotonic() - started)


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


async def _send(
    transport: PinnedTransport,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    budget: int,
) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    try:
        outgoing = httpx.Request(method, url, headers=headers, content=body)
    except httpx.InvalidURL as e:
        raise Refused("bad_url", f"{url[:200]}: {e}") from None
    try:
        response = await transport.handle_async_request(outgoing)
    except httpx.TimeoutException:
        raise TimedOut("timeout", f"{url[:200]} timed out") from None
    except httpx.HTTPError as e:
        raise Unreachable(_failure_code(e), f"{url[:200]}: {_failure_text(e)}") from None
    try:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > budget:
            raise TooLarge("response_too_large", f"{url[:200]} sends {declared} bytes, {budget} left")
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > budget:
                raise TooLarge("response_too_large", f"{url[:200]} sent more than the {budget} bytes left")
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise TimedOut("timeout", f"{url[:200]} timed out") from None
    except httpx.HTTPError as e:
        raise Unreachable(_failure_code(e), f"{url[:200]}: {_failure_text(e)}") from None
    finally:
        await response.aclose()
    return response.status_code, tuple((k, v) for k, v in response.headers.multi_items()), b"".join(chunks)


def _failure_code(error: httpx.HTTPError) -> str:
    cause = error.__cause__
    if (
        isinstance(cause, ssl.SSLError)
        or "SSL" in type(cause).__name__
        or "certificate" in str(error).lower()
    ):
        return "tls"
    if isinstance(error, httpx.ConnectError):
        return "connect"
    return "protocol"


def _failure_text(error: httpx.HTTPError) -> str:
    return str(error) or type(error).__name__


__all__ = ["EgressError", "IPAddress", "Request", "Response", "fetch"]

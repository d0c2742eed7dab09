"""One outbound call end to end against real servers on 127.0.0.1 (allowed here only because the
policy lists 127.0.0.0/8, as the runtime's tests configure it): pinning, redirects, headers, limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from egress_loopback import ScriptedResolver, echo, make_ca, serving, slow_loris

from realm.runtime.egress.addresses import AddressPolicy
from realm.runtime.egress.allowlist import Allowlist
from realm.runtime.egress.checks import EgressPolicy, check_url
from realm.runtime.egress.client import MAX_REDIRECTS, Request, Response, fetch
from realm.runtime.egress.errors import Refused, TimedOut, TooLarge, Unreachable
from realm.runtime.egress.transport import PinnedTransport, default_ssl_context

LOOPBACK = AddressPolicy.from_cidrs(["127.0.0.0/8"])


def policy(*hosts: str, addresses: AddressPolicy = LOOPBACK) -> EgressPolicy:
    return EgressPolicy(Allowlist.parse(list(hosts)), addresses)


async def call(
    p: EgressPolicy,
    url: str,
    resolver: ScriptedResolver | None = None,
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    max_bytes: int = 1 << 20,
    seconds: float = 10.0,
    ssl_context: object = None,
) -> Response:
    return await fetch(
        p,
        Request(method, url, headers, body),
        resolver=resolver or ScriptedResolver(),
        ssl_context=ssl_context or default_ssl_context(),  # type: ignore[arg-type]
        max_bytes=max_bytes,
        deadline=time.monotonic() + seconds,
    )


async def test_an_allowed_loopback_call_reaches_the_server() -> None:
    async with serving({"/echo": echo}) as port:
        r = await call(
            policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/echo", method="POST", body=b"hi"
        )
    assert r.status == 200
    assert json.loads(r.body)["body_bytes"] == 2


async def test_without_the_loopback_cidr_the_same_call_is_refused() -> None:
    async with serving({"/echo": echo}) as port:
        with pytest.raises(Refused, match=r"127\.0\.0\.1 is loopback: refused"):
            await call(
                policy(f"http://127.0.0.1:{port}", addresses=AddressPolicy()), f"http://127.0.0.1:{port}/echo"
            )


async def test_the_address_checked_is_the_address_connected_to_with_one_lookup() -> None:
    # DNS rebinding: the second answer would point elsewhere (nothing listens on 127.0.0.2 at this port,
    # and 169.254.169.254 is the metadata endpoint). The call must use the first, checked answer.
    async with serving({"/echo": echo}) as port:
        resolver = ScriptedResolver({"api.test": [["127.0.0.1"], ["169.254.169.254"]]})
        r = await call(policy(f"http://api.test:{port}"), f"http://api.test:{port}/echo", resolver)
    assert r.status == 200
    assert json.loads(r.body)["host"] == f"api.test:{port}"
    assert resolver.lookups == ["api.test"]


async def test_a_rebinding_answer_on_a_redirect_hop_is_checked_again_and_refused() -> None:
    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://api.test:{request.url.port}/echo")

    async with serving({"/hop": hop, "/echo": echo}) as port:
        resolver = ScriptedResolver({"api.test": [["127.0.0.1"], ["169.254.169.254"]]})
        with pytest.raises(Refused) as caught:
            await call(policy(f"http://api.test:{port}"), f"http://api.test:{port}/hop", resolver)
    assert caught.value.message == (
        "169.254.169.254 is the cloud metadata endpoint (api.test resolves to it): refused"
    )
    assert resolver.lookups == ["api.test", "api.test"]


async def test_a_redirect_to_the_metadata_endpoint_is_refused() -> None:
    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    async with serving({"/hop": hop}) as port:
        p = EgressPolicy(Allowlist.parse(["http://*:*"]), LOOPBACK, allow_wildcard=True)
        with pytest.raises(Refused, match=r"^169\.254\.169\.254 is the cloud metadata endpoint: refused$"):
            await call(p, f"http://127.0.0.1:{port}/hop")


async def test_a_redirect_off_the_allowlist_is_refused() -> None:
    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("https://evil.example/steal")

    async with serving({"/hop": hop}) as port:
        with pytest.raises(Refused) as caught:
            await call(policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/hop")
    assert (caught.value.code, caught.value.message) == (
        "not_allowed",
        "https://evil.example:443 is not in the tenant's allowed outbound hosts",
    )


async def test_redirects_past_the_limit_fail() -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', '0')) + 1}")

    async with serving({"/loop": loop}) as port:
        with pytest.raises(Unreachable) as caught:
            await call(policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/loop")
    assert caught.value.code == "too_many_redirects"
    assert caught.value.message.startswith(f"more than {MAX_REDIRECTS} redirects")


async def test_credentials_do_not_follow_a_redirect_to_another_origin() -> None:
    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://other.test:{request.url.port}/echo")

    async with serving({"/hop": hop, "/echo": echo}) as port:
        # Another name for the same loopback server: another origin all the same.
        resolver = ScriptedResolver({"api.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        p = policy(f"http://api.test:{port}", f"http://other.test:{port}")
        headers = (("Authorization", "Bearer module-token"), ("Cookie", "a=b"), ("X-Trace", "1"))
        r = await call(p, f"http://api.test:{port}/hop", resolver, headers=headers)
    seen = json.loads(r.body)["headers"]
    assert "authorization" not in seen and "cookie" not in seen
    assert seen["x-trace"] == "1"


async def test_the_transport_connects_to_no_host_it_was_not_given() -> None:
    async with serving({"/echo": echo}) as port:
        resolver = ScriptedResolver({"api.test": [["127.0.0.1"]]})
        target = await check_url(policy(f"http://api.test:{port}"), f"http://api.test:{port}/", resolver)
        async with httpx.AsyncClient(transport=PinnedTransport([target], default_ssl_context())) as client:
            assert (await client.get(f"http://api.test:{port}/echo")).status_code == 200
            with pytest.raises(httpx.ConnectError, match=f"localhost:{port} was not checked"):
                await client.get(f"http://localhost:{port}/echo")


@pytest.mark.parametrize(
    "header",
    [
        "Host",
        "host",
        "Connection",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "TE",
        "Content-Length",
    ],
)
async def test_headers_the_runtime_owns_are_refused(header: str) -> None:
    with pytest.raises(Refused) as caught:
        await call(policy("https://api.example.com"), "https://api.example.com/", headers=((header, "x"),))
    assert (caught.value.code, caught.value.message) == (
        "forbidden_header",
        f"header {header!r} is set by the runtime, not the caller",
    )


@pytest.mark.parametrize(
    ("name", "value"), [("X-A", "caf\u00e9"), ("Bad Name", "1"), ("X:A", "1"), ("", "1"), ("X-A", "a\0b")]
)
async def test_headers_that_cannot_go_out_as_written_are_refused(name: str, value: str) -> None:
    with pytest.raises(Refused) as caught:
        await call(policy("https://api.example.com"), "https://api.example.com/", headers=((name, value),))
    assert caught.value.code == "bad_header"


async def test_header_injection_is_refused() -> None:
    with pytest.raises(Refused, match="invalid name or value"):
        await call(
            policy("https://api.example.com"),
            "https://api.example.com/",
            headers=(("X-A", "1\r\nHost: evil"),),
        )


async def test_nothing_of_the_pods_environment_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A proxy and a .netrc in the environment would add a hop and the pod's credentials; neither applies.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login pod password pod-secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    async with serving({"/echo": echo}) as port:
        r = await call(policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/echo")
    seen = json.loads(r.body)["headers"]
    assert r.status == 200
    assert "authorization" not in seen and "proxy-authorization" not in seen


async def test_an_oversized_response_is_cut_by_its_declared_length() -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 200_000)

    async with serving({"/big": big}) as port:
        with pytest.raises(TooLarge) as caught:
            await call(policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/big", max_bytes=100_000)
    assert caught.value.message.endswith("sends 200000 bytes, 100000 left")


async def test_an_oversized_chunked_response_is_cut_while_it_streams() -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10_000):
            await response.write(b"x" * 4096)
        return response

    async with serving({"/endless": endless}) as port:
        with pytest.raises(TooLarge, match="sent more than the 100000 bytes left"):
            await call(
                policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/endless", max_bytes=100_000
            )


async def test_a_request_body_over_the_budget_is_refused_before_connecting() -> None:
    with pytest.raises(TooLarge, match="request body of 11 bytes over 10 left"):
        await call(
            policy("https://api.example.com"),
            "https://api.example.com/",
            method="POST",
            body=b"x" * 11,
            max_bytes=10,
        )


async def test_a_slow_loris_server_is_cut_at_the_deadline() -> None:
    async with serving({"/slow": slow_loris}) as port:
        started = time.monotonic()
        with pytest.raises(TimedOut):
            await call(policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/slow", seconds=1.0)
    # It dribbles for an hour; the call ends at its 1 s deadline (generous bound against a loaded CI box).
    assert time.monotonic() - started < 10


async def test_tls_verifies_the_urls_name_while_connecting_to_the_pinned_address(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, ["api.test"])
    async with serving({"/echo": echo}, ssl_context=ca.server_context()) as port:
        resolver = ScriptedResolver({"api.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        p = policy(f"https://api.test:{port}", f"https://other.test:{port}")
        r = await call(p, f"https://api.test:{port}/echo", resolver, ssl_context=ca.client_context())
        assert r.status == 200
        # Same address, another name: the certificate does not cover it, so TLS fails.
        with pytest.raises(Unreachable) as caught:
            await call(p, f"https://other.test:{port}/echo", resolver, ssl_context=ca.client_context())
    assert caught.value.code == "tls"


async def test_an_unreachable_target_fails_with_a_clear_code() -> None:
    async with serving({}) as port:
        pass  # closed again: nothing listens on this port now
    with pytest.raises(Unreachable) as caught:
        await call(policy(f"http://127.0.0.1:{port}"), f"http://127.0.0.1:{port}/")
    assert caught.value.code == "connect"

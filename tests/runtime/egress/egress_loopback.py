"""Real HTTP(S) servers on 127.0.0.1 for the egress tests, and the one fake they use.

`ScriptedResolver` is a fake at the resolver seam (runtime/egress/resolver.py) only: it answers the
names a test gives it (so `api.test` can resolve to 127.0.0.1, to 169.254.169.254, or change between
lookups) and counts lookups. Everything else is real: aiohttp servers on loopback, the pinned httpx
transport, TLS with a certificate made here for a test CA.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from realm.runtime.egress.errors import Unreachable
from realm.runtime.egress.urls import IPAddress

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ScriptedResolver:
    """A fake at the resolver seam: `answers[name]` is a list of answers, one per lookup (the last one
    repeats). Records every lookup so a test can prove how many were made."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        script = self.answers.get(host)
        if not script:
            raise Unreachable("dns", f"cannot resolve {host}")
        n = sum(1 for h in self.lookups if h == host) - 1
        return [ipaddress.ip_address(a) for a in script[min(n, len(script) - 1)]]


@asynccontextmanager
async def serving(
    routes: dict[str, Handler], *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """An aiohttp app on 127.0.0.1 with `routes` (GET and POST), yielding its port."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield port
    finally:
        await runner.cleanup()


async def echo(request: web.Request) -> web.Response:
    """What arrived: method, Host, the headers' names and values, the body's length."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "host": request.headers.get("Host"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_bytes": len(body),
        }
    )


async def slow_loris(request: web.Request) -> web.StreamResponse:
    """Headers at once, then one byte every 0.2 s for an hour."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for _ in range(18000):
        await response.write(b".")
        await asyncio.sleep(0.2)
    return response


@dataclass(frozen=True)
class TestCA:
    """A CA and a server certificate for `names`, written to `folder`; `client_context` trusts the CA."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_ca(folder: Path, names: list[str]) -> TestCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "realm egress test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = TestCA(folder / "server.pem", folder / "server.key", folder / "ca.pem")
    out.cert_file.write_bytes(cert.public_bytes(pem))
    out.key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out.ca_file.write_bytes(ca.public_bytes(pem))
    return out

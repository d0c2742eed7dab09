"""The runtime's listening sockets give their connections TCP_NODELAY: without it a non-streamed answer's
body waited behind its headers for the client's delayed ACK (about 40 ms per request, measured with a
raw socket against /readyz before the fix)."""

from __future__ import annotations

import asyncio
import socket

from realm.runtime.server import _bind


async def test_a_connection_to_the_runtimes_socket_has_tcp_nodelay() -> None:
    listening = _bind("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
    port = listening.getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()

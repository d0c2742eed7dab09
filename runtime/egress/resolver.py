"""Names to addresses: the one seam where tests may put a fake.

Every outbound call resolves its host once, here; the addresses it gets are checked and then connected
to as they are (runtime/egress/transport.py), so no second lookup happens between check and connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Protocol

from .errors import Unreachable
from .urls import IPAddress


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` has now, in the order to try them; Unreachable when it has none."""
        ...


class SystemResolver:
    """The platform's resolver (getaddrinfo on the loop's executor), as a pod's DNS answers."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise Unreachable("dns", f"cannot resolve {host}: {e.strerror}") from None
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise Unreachable("dns", f"{host} has no addresses")
        return addresses

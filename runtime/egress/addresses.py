"""Which addresses an outbound call may connect to, whatever name led there.

Refused unless an allowed CIDR (chart value egress.allowedCidrs) covers them: loopback, unspecified,
link-local, private (RFC 1918, unique-local IPv6), carrier-grade NAT, multicast, reserved and other
non-global ranges, and the cluster's own CIDRs. The metadata endpoints (169.254.169.254,
fd00:ec2::254) are refused even then: no tenant call has a reason to reach the node's credentials.
An IPv6 address that embeds an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by the IPv4 one too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .urls import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_FORBIDDEN: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("loopback", (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))),
    ("unspecified", (ipaddress.IPv4Network("0.0.0.0/8"), ipaddress.IPv6Network("::/128"))),
    ("link-local", (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fe80::/10"))),
    (
        "private",
        (
            ipaddress.IPv4Network("10.0.0.0/8"),
            ipaddress.IPv4Network("172.16.0.0/12"),
            ipaddress.IPv4Network("192.168.0.0/16"),
            ipaddress.IPv6Network("fc00::/7"),
        ),
    ),
    ("carrier-grade NAT", (_CGNAT,)),
    ("multicast", (ipaddress.IPv4Network("224.0.0.0/4"), ipaddress.IPv6Network("ff00::/8"))),
)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), which is where it may lead."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


@dataclass(frozen=True)
class AddressPolicy:
    allowed: tuple[IPNetwork, ...] = ()
    cluster: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, allowed: Iterable[str] = (), cluster: Iterable[str] = ()) -> AddressPolicy:
        return cls(
            tuple(ipaddress.ip_network(c, strict=False) for c in allowed),
            tuple(ipaddress.ip_network(c, strict=False) for c in cluster),
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be connected to (a few words), or None when it may."""
        inner = embedded_ipv4(address)
        if inner is not None:
            why = self.refusal(inner)
            if why is not None:
                return f"{why} ({inner} embedded)"
        if address in METADATA:
            return "the cloud metadata endpoint"
        if any(address in net for net in self.allowed if net.version == address.version):
            return None
        for name, nets in _FORBIDDEN:
            if any(address in net for net in nets if net.version == address.version):
                return name
        if any(address in net for net in self.cluster if net.version == address.version):
            return "a cluster CIDR"
        if inner is None and not address.is_global:
            return "not globally routable"
        return None

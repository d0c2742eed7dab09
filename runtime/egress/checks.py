"""Whether a URL may be called, and at which addresses: the allowlist, then every resolved address.

`check_url` is what every outbound connection goes through, a module's `http-fetch` and an MCP
server's session alike; its `ResolvedTarget` carries the addresses that passed, and the transport
connects to those and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from .addresses import AddressPolicy
from .allowlist import Allowlist
from .errors import Refused
from .resolver import Resolver
from .urls import IPAddress, Url, parse_url


@dataclass(frozen=True)
class EgressPolicy:
    """What one tenant may reach: its allowlist (already refused at reconcile when it holds a `*` host
    the platform does not allow; checked again here) and the platform's address policy."""

    allowlist: Allowlist
    addresses: AddressPolicy
    allow_wildcard: bool = False

    def __post_init__(self) -> None:
        if self.allowlist.has_wildcard and not self.allow_wildcard:
            raise Refused("wildcard_not_allowed", "a `*` host is listed but egress.allowWildcard is off")


@dataclass(frozen=True)
class ResolvedTarget:
    url: Url
    # Every address the host had, all allowed; connections go to these, in order, and nowhere else.
    addresses: tuple[IPAddress, ...]


def check_allowed(policy: EgressPolicy, url: str | Url) -> Url:
    """The URL parsed and matched against the allowlist (no DNS): Refused naming why not."""
    parsed = url if isinstance(url, Url) else parse_url(url)
    if not policy.allowlist.permits(parsed):
        raise Refused(
            "not_allowed",
            f"{parsed.scheme}://{parsed.host}:{parsed.port} is not in the tenant's allowed outbound hosts",
        )
    return parsed


def check_addresses(policy: EgressPolicy, url: Url, addresses: list[IPAddress]) -> ResolvedTarget:
    """Every address must be allowed: one forbidden answer refuses the name (a resolver that mixes a
    public address with 127.0.0.1 is probing, and which one a client tries first is not ours to bet on)."""
    for address in addresses:
        why = policy.addresses.refusal(address)
        if why is not None:
            via = "" if url.ip is not None else f" ({url.host} resolves to it)"
            raise Refused("forbidden_address", f"{address} is {why}{via}: refused")
    return ResolvedTarget(url, tuple(addresses))


async def check_url(policy: EgressPolicy, url: str | Url, resolver: Resolver) -> ResolvedTarget:
    """Allowlist, then one resolution, then every address: the target a connection may be made to."""
    parsed = check_allowed(policy, url)
    if parsed.ip is not None:
        return check_addresses(policy, parsed, [parsed.ip])
    return check_addresses(policy, parsed, await resolver.resolve(parsed.host, parsed.port))

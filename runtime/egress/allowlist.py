"""The tenant's allowlist in Spin's `allowed_outbound_hosts` syntax: `scheme://host[:port]`.

- scheme: `http`, `https` or `*`;
- host: a DNS name, `*.example.com` (any name under example.com, not example.com itself), an IP
  literal (normalized like a URL's host, so `http://2130706433` lists 127.0.0.1), or `*` (any host);
- port: a number, `*`, or absent (the scheme's default; with scheme `*`, either default).

`*` alone is `*://*:*`. A pattern whose host is `*` lets a module reach anything the address policy
does not refuse: only where the platform allows it (chart value egress.allowWildcard).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Refused
from .urls import DEFAULT_PORTS, Url, normalize_host

_PATTERN = re.compile(r"^(?P<scheme>[a-z*]+)://(?P<host>\[[^\]]*\]|[^:/]+)(?::(?P<port>[0-9]+|\*))?/?$")


class InvalidPattern(ValueError):
    """An allowlist entry that is not Spin syntax (a spec validation error, never a runtime one)."""


@dataclass(frozen=True)
class HostPattern:
    scheme: str  # "http", "https" or "*"
    host: str  # a normalized host, "*", or "*.suffix"
    port: int | None  # None: any port ("*"); 0: the scheme's default

    @property
    def wildcard(self) -> bool:
        """Whether it reaches any host (what egress.allowWildcard governs)."""
        return self.host == "*"

    def matches(self, url: Url) -> bool:
        if self.scheme != "*" and self.scheme != url.scheme:
            return False
        if self.port == 0 and url.port != DEFAULT_PORTS[url.scheme]:
            return False
        if self.port not in (None, 0) and self.port != url.port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return url.ip is None and url.host.endswith(self.host[1:])
        return self.host == url.host


def parse_pattern(text: str) -> HostPattern:
    """One allowlist entry, or InvalidPattern saying what is wrong with it."""
    if text == "*":
        return HostPattern("*", "*", None)
    m = _PATTERN.match(text.strip().lower())
    if m is None:
        raise InvalidPattern(
            f"{text!r} is not scheme://host[:port] (e.g. https://api.example.com, https://*.example.com:8443)"
        )
    scheme = m["scheme"]
    if scheme not in ("*", *DEFAULT_PORTS):
        raise InvalidPattern(f"{text!r}: scheme must be http, https or *")
    host = m["host"]
    if host != "*":
        wildcard_suffix = host.startswith("*.")
        try:
            name, _ = normalize_host(host[2:] if wildcard_suffix else host)
        except Refused as e:
            raise InvalidPattern(f"{text!r}: {e.message}") from None
        if "*" in name:
            raise InvalidPattern(f"{text!r}: `*` is allowed only as the whole host or a leading `*.`")
        host = f"*.{name}" if wildcard_suffix else name
    port_text = m["port"]
    if port_text is None:
        port: int | None = 0
    elif port_text == "*":
        port = None
    else:
        port = int(port_text)
        if not 0 < port < 65536:
            raise InvalidPattern(f"{text!r}: port must be from 1 to 65535")
    return HostPattern(scheme, host, port)


@dataclass(frozen=True)
class Allowlist:
    patterns: tuple[HostPattern, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> Allowlist:
        return cls(tuple(parse_pattern(e) for e in entries))

    def permits(self, url: Url) -> bool:
        return any(p.matches(url) for p in self.patterns)

    @property
    def has_wildcard(self) -> bool:
        return any(p.wildcard for p in self.patterns)

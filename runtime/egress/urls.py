"""A URL as an outbound call may name it: parsed strictly, host normalized before anything matches it.

Browsers and `inet_aton` read `2130706433`, `0x7f.1` and `017700000001` as 127.0.0.1; an allowlist or
address check that compared the text would let them through. Here a host whose last label is numeric is
an IPv4 address in one of those forms or is refused, and the check sees the address it means. Userinfo
(`user@host`) is refused outright: it is how a URL hides its real host from a reader.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import Refused

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>[/?#].*)?$", re.S)
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Url:
    scheme: str
    # Lower case, no trailing dot; an IP address in its canonical text (IPv6 without brackets).
    host: str
    port: int
    # Path and query, always starting with "/"; the fragment is dropped (it never leaves a client).
    target: str
    ip: IPAddress | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.target}"


def parse_ipv4_forms(host: str) -> ipaddress.IPv4Address | None:
    """`host` read as `inet_aton` reads it (one to four parts, each decimal, 0x-hex or 0-octal, the
    last filling the remaining bytes); None when it is not numeric at all. A numeric host that is no
    valid address is refused rather than left to a resolver that might read it differently."""
    labels = host.split(".")
    if not _NUMERIC_LABEL.match(labels[-1]):
        return None
    if len(labels) > 4:
        raise Refused("bad_host", f"host {host!r} ends in a number but is no IPv4 address")
    parts: list[int] = []
    for label in labels:
        if not _NUMERIC_LABEL.match(label):
            raise Refused("bad_host", f"host {host!r} ends in a number but is no IPv4 address")
        if label.startswith("0x"):
            parts.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if any(c in "89" for c in label):
                raise Refused("bad_host", f"host {host!r}: {label!r} is no octal number")
            parts.append(int(label, 8))
        else:
            parts.append(int(label))
    last_bytes = 5 - len(parts)
    if any(p > 255 for p in parts[:-1]) or parts[-1] >= 256**last_bytes:
        raise Refused("bad_host", f"host {host!r} is out of the IPv4 range")
    value = 0
    for p in parts[:-1]:
        value = value * 256 + p
    value = value * 256**last_bytes + parts[-1]
    return ipaddress.IPv4Address(value)


def normalize_host(raw: str) -> tuple[str, IPAddress | None]:
    """The host's canonical text and its address when it is an IP literal."""
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise Refused("bad_host", f"unclosed IPv6 literal {raw!r}")
        inner = raw[1:-1]
        if "%" in inner:
            raise Refused("bad_host", "IPv6 zone identifiers are not allowed")
        try:
            v6 = ipaddress.IPv6Address(inner)
        except ValueError:
            raise Refused("bad_host", f"{raw!r} is no IPv6 address") from None
        return str(v6), v6
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or not host.isascii():
        raise Refused("bad_host", f"host {raw!r} must be ASCII (IDNA names in their xn-- form)")
    v4 = parse_ipv4_forms(host)
    if v4 is not None:
        return str(v4), v4
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise Refused("bad_host", f"host {raw!r} is not a valid DNS name")
    return host, None


def parse_url(text: str) -> Url:
    """`text` as an outbound call's URL: http or https, a host, no userinfo; refused otherwise."""
    if len(text) > MAX_URL_CHARS:
        raise Refused("bad_url", f"URL longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in text):
        raise Refused("bad_url", "URL contains whitespace, control characters or backslashes")
    m = _URL.match(text)
    if m is None:
        raise Refused("bad_url", f"{text[:200]!r} is no absolute URL (scheme://host/...)")
    scheme = m["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused("bad_scheme", f"scheme {scheme!r} is not allowed (http and https only)")
    authority = m["authority"]
    if "@" in authority:
        raise Refused("userinfo", "URLs with userinfo (user@host) are refused; send credentials in a header")
    host_text, port = _split_port(authority)
    host, ip = normalize_host(host_text)
    rest = m["rest"] or "/"
    target = rest.split("#", 1)[0]
    if target.startswith("?"):
        target = "/" + target
    return Url(scheme, host, port if port is not None else DEFAULT_PORTS[scheme], target or "/", ip)


def _split_port(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        host, tail = authority[: end + 1], authority[end + 1 :]
        if end < 0 or (tail and not tail.startswith(":")):
            raise Refused("bad_host", f"malformed IPv6 authority {authority!r}")
        port_text = tail[1:] if tail else None
    elif ":" in authority:
        host, port_text = authority.rsplit(":", 1)
    else:
        host, port_text = authority, None
    if not host:
        raise Refused("bad_host", "URL has no host")
    if port_text is None or port_text == "":
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refused("bad_port", f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)

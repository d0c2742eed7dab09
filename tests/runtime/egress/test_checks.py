"""The checks before any connection: URL parsing and normalization, the allowlist, the address policy.

Each hostile form is refused with the code and message naming why; the DNS cases use the fake at the
resolver seam (egress_loopback.ScriptedResolver)."""

from __future__ import annotations

import pytest
from egress_loopback import ScriptedResolver

from realm.runtime.egress.addresses import AddressPolicy
from realm.runtime.egress.allowlist import Allowlist, InvalidPattern, parse_pattern
from realm.runtime.egress.checks import EgressPolicy, check_url
from realm.runtime.egress.errors import Refused
from realm.runtime.egress.urls import parse_url

# Everything the allowlist could list; only the address policy stands between these URLs and a socket.
ANYTHING = EgressPolicy(Allowlist.parse(["*"]), AddressPolicy(), allow_wildcard=True)


async def refusal(policy: EgressPolicy, url: str, resolver: ScriptedResolver | None = None) -> Refused:
    with pytest.raises(Refused) as caught:
        await check_url(policy, url, resolver or ScriptedResolver())
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # decimal
        "http://017700000001/",  # octal
        "http://0x7f000001/",  # hex
        "http://0x7f.1/",  # hex, two parts
        "http://127.1/",  # shortened
        "http://0177.0.0.01/",  # octal dotted
        "http://127.0.0.1./",  # trailing dot
    ],
)
async def test_ipv4_literals_in_any_form_are_read_as_the_address_they_mean(url: str) -> None:
    assert parse_url(url).host == "127.0.0.1"
    e = await refusal(ANYTHING, url)
    assert (e.code, e.message) == ("forbidden_address", "127.0.0.1 is loopback: refused")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 is loopback (127.0.0.1 embedded): refused"),
        ("http://[::ffff:7f00:1]/", "::ffff:7f00:1 is loopback (127.0.0.1 embedded): refused"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe is the cloud metadata endpoint "
         "(169.254.169.254 embedded): refused"),
        ("http://[64:ff9b::10.0.0.1]/", "64:ff9b::a00:1 is private (10.0.0.1 embedded): refused"),
        ("http://[2002:7f00:1::]/", "2002:7f00:1:: is loopback (127.0.0.1 embedded): refused"),
        ("http://[::1]/", "::1 is loopback: refused"),
        ("http://[fe80::1]/", "fe80::1 is link-local: refused"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is the cloud metadata endpoint: refused"),
    ],
)  # fmt: skip
async def test_ipv6_literals_and_the_ipv4_they_embed_are_checked(url: str, message: str) -> None:
    e = await refusal(ANYTHING, url)
    assert (e.code, e.message) == ("forbidden_address", message)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://2852039166/", "the cloud metadata endpoint"),  # 169.254.169.254, decimal
        ("http://0.0.0.0/", "unspecified"),
        ("http://169.254.1.1/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "not globally routable"),
    ],
)
async def test_non_public_ranges_are_refused_by_name(url: str, why: str) -> None:
    e = await refusal(ANYTHING, url)
    assert e.code == "forbidden_address" and e.message.endswith(f" is {why}: refused")


@pytest.mark.parametrize(
    "url",
    ["http://user@api.example.com/", "http://api.example.com@evil.example/", "https://u:p@api.example.com/"],
)
async def test_userinfo_is_refused(url: str) -> None:
    policy = EgressPolicy(
        Allowlist.parse(["https://api.example.com", "http://api.example.com"]), AddressPolicy()
    )
    e = await refusal(policy, url)
    assert (e.code, e.message) == (
        "userinfo",
        "URLs with userinfo (user@host) are refused; send credentials in a header",
    )


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "bad_scheme"),
        ("gopher://api.example.com/", "bad_scheme"),
        ("http://api.example.com\\@evil/", "bad_url"),
        ("http://api.example.com:0/", "bad_port"),
        ("http://999.1.1.1/", "bad_host"),
        ("http://1.2.3.4.5/", "bad_host"),
        ("http://08.1.1.1/", "bad_host"),
        ("http://[fe80::1%25eth0]/", "bad_host"),
        ("http://exämple.com/", "bad_host"),
        ("http://%31%32%37.0.0.1/", "bad_host"),
        ("http://[::1/", "bad_host"),
    ],
)
def test_malformed_urls_are_refused(url: str, code: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_url(url)
    assert caught.value.code == code


async def test_a_host_off_the_allowlist_is_refused_before_any_lookup() -> None:
    resolver = ScriptedResolver({"evil.example": [["93.184.216.34"]]})
    policy = EgressPolicy(Allowlist.parse(["https://api.example.com"]), AddressPolicy())
    e = await refusal(policy, "https://evil.example/x", resolver)
    assert e.code == "not_allowed"
    assert e.message == "https://evil.example:443 is not in the tenant's allowed outbound hosts"
    assert resolver.lookups == []


async def test_an_ip_literal_matches_only_an_ip_pattern_in_any_of_its_forms() -> None:
    # The allowlist names 127.0.0.1 in decimal; the URL in hex: both mean the same address.
    policy = EgressPolicy(
        Allowlist.parse(["http://2130706433:8080"]), AddressPolicy.from_cidrs(["127.0.0.0/8"])
    )
    target = await check_url(policy, "http://0x7f.0.0.1:8080/", ScriptedResolver())
    assert [str(a) for a in target.addresses] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (["127.0.0.1"], "127.0.0.1 is loopback (api.test resolves to it): refused"),
        (["169.254.169.254"], "169.254.169.254 is the cloud metadata endpoint (api.test resolves to it): "
         "refused"),
        (["93.184.216.34", "10.0.0.7"], "10.0.0.7 is private (api.test resolves to it): refused"),
    ],
)  # fmt: skip
async def test_a_name_resolving_to_a_forbidden_address_is_refused(answer: list[str], message: str) -> None:
    policy = EgressPolicy(Allowlist.parse(["https://api.test"]), AddressPolicy())
    e = await refusal(policy, "https://api.test/v1", ScriptedResolver({"api.test": [answer]}))
    assert (e.code, e.message) == ("forbidden_address", message)


async def test_allowed_cidrs_open_a_range_but_never_the_metadata_endpoint() -> None:
    policy = EgressPolicy(Allowlist.parse(["http://*:*"]), AddressPolicy.from_cidrs(["169.254.0.0/16"]), True)
    assert (await check_url(policy, "http://169.254.1.1/", ScriptedResolver())).addresses
    e = await refusal(policy, "http://169.254.169.254/latest/meta-data/")
    assert e.message == "169.254.169.254 is the cloud metadata endpoint: refused"


async def test_cluster_cidrs_are_refused_unless_allowed() -> None:
    cluster = AddressPolicy.from_cidrs(cluster=["203.0.113.0/24"])
    e = await refusal(EgressPolicy(Allowlist.parse(["*"]), cluster, True), "http://203.0.113.5/")
    assert e.message == "203.0.113.5 is a cluster CIDR: refused"
    opened = AddressPolicy.from_cidrs(["203.0.113.0/24"], ["203.0.113.0/24"])
    assert await check_url(
        EgressPolicy(Allowlist.parse(["*"]), opened, True), "http://203.0.113.5/", ScriptedResolver()
    )


def test_a_wildcard_host_needs_the_platforms_allowance() -> None:
    with pytest.raises(Refused, match=r"a `\*` host is listed but egress.allowWildcard is off"):
        EgressPolicy(Allowlist.parse(["*://*:*"]), AddressPolicy())


@pytest.mark.parametrize(
    ("pattern", "url", "matches"),
    [
        ("https://api.example.com", "https://api.example.com/x", True),
        ("https://api.example.com", "https://API.example.com./x", True),
        ("https://api.example.com", "http://api.example.com/x", False),
        ("https://api.example.com", "https://api.example.com:8443/x", False),
        ("https://api.example.com:*", "https://api.example.com:8443/x", True),
        ("https://*.example.com", "https://a.b.example.com/", True),
        ("https://*.example.com", "https://example.com/", False),
        ("https://*.example.com", "https://evilexample.com/", False),
        ("*://api.example.com", "http://api.example.com/", True),
        ("*://api.example.com", "https://api.example.com/", True),
        ("*://api.example.com", "http://api.example.com:443/", False),
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080/", True),
        ("https://*.example.com", "https://1.2.3.4/", False),
    ],
)
def test_spin_patterns_match(pattern: str, url: str, matches: bool) -> None:
    assert parse_pattern(pattern).matches(parse_url(url)) is matches


@pytest.mark.parametrize(
    "pattern",
    ["api.example.com", "https://api.example.com/path", "https://a.*.com", "ftp://x", "https://x:0"],
)
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidPattern):
        parse_pattern(pattern)

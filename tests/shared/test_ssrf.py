"""The SSRF guard's one judgement of addresses: Kiln's table of the IANA special-purpose registries,
IPv4 and IPv6, with IPv4 carried inside IPv6 (mapped, translated, NAT64, 6to4, Teredo, compatible)
judged too, whatever the interpreter's ``ipaddress`` flags say; and host names resolved to them."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from shared.security.ssrf import URLRefused, forbidden_reason, resolve_checked
from tests.support.addresses import ADDRESSES, LOCAL_DEVELOPMENT


@pytest.mark.parametrize(("address", "reason"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_only_globally_reachable_addresses_pass(address, reason):
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(("address", "reason"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_local_development_allows_loopback_and_private_use_only(address, reason):
    allowed = reason is None or address in LOCAL_DEVELOPMENT
    assert (forbidden_reason(ipaddress.ip_address(address), allow_private=True) is None) == allowed


def test_the_verdicts_do_not_depend_on_the_interpreters_ipaddress_flags(monkeypatch):
    """Which ranges ``is_global`` and ``is_private`` cover has changed between Python patch releases."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for flag in ("is_global", "is_private", "is_reserved", "is_link_local", "is_loopback", "is_multicast"):
            monkeypatch.setattr(cls, flag, property(lambda self, flag=flag: flag == "is_global"))
        monkeypatch.setattr(cls, "is_unspecified", property(lambda self: False))
    assert [forbidden_reason(ipaddress.ip_address(a)) for a, _ in ADDRESSES] == [r for _, r in ADDRESSES]


# Host names and numeric forms the resolver turns into addresses.
FAKE_DNS = {
    "metadata.internal.example": ["169.254.169.254"],
    "cgnat.example": ["100.100.100.200"],
    "rebind.example": ["93.184.216.34", "10.0.0.7"],  # every address counts, not just the first
    "v6private.example": ["fd00::5"],
    "sixtofour.example": ["2002:c0a8:101::1"],
    "nat64.example": ["64:ff9b::c0a8:101"],
    "dummy.example": ["192.0.0.8"],
    "public.example": ["93.184.216.34", "2606:4700::1111"],
}
LOCAL, NEVER = True, False
# (URL, fragment of the refusal or None when it passes, whether local development may reach it)
URLS: list[tuple[str, str | None, bool]] = [
    ("http://metadata.internal.example/latest/meta-data", "link-local", NEVER),
    ("http://cgnat.example/x.png", "carrier-grade NAT", NEVER),
    ("http://rebind.example/x.png", "10.0.0.7", LOCAL),
    ("http://v6private.example/x.png", "unique-local", LOCAL),
    ("http://sixtofour.example/x.png", "6to4, carrying the private IPv4 address 192.168.1.1", LOCAL),
    ("http://nat64.example/x.png", "NAT64, carrying the private IPv4 address 192.168.1.1", LOCAL),
    ("http://dummy.example/hook", "(dummy)", NEVER),
    ("https://public.example/x.png", None, LOCAL),
    ("http://localhost:8080/hook", "loopback", LOCAL),
    ("http://2130706433/", "loopback", LOCAL),  # 127.0.0.1 as one decimal number
    ("http://0x7f000001/", "loopback", LOCAL),  # ... as hex
    ("http://0177.0.0.1/", "loopback", LOCAL),  # ... with an octal first part
    ("http://127.1/", "loopback", LOCAL),  # ... shortened
    ("http://[::ffff:7f00:1]/", "IPv4-mapped", LOCAL),
    ("http://[0:0:0:0:0:ffff:169.254.169.254]/", "link-local", NEVER),
    ("http://[2002:a9fe:a9fe::]/", "6to4, carrying the link-local IPv4 address 169.254.169.254", NEVER),
    ("http://100.64.0.1/", "carrier-grade NAT", NEVER),
    ("http://192.0.0.8/hook", "(dummy)", NEVER),
    ("http://3221225480/", "(dummy)", NEVER),  # 192.0.0.8 as one number
    ("http://192.0.0.255/", "IETF protocol assignments", NEVER),
    ("http://[::ffff:192.0.0.8]/", "IPv4-mapped, carrying the dummy IPv4 address", NEVER),
    ("http://[64:ff9b::c000:8]/", "NAT64, carrying the dummy IPv4 address", NEVER),
    ("http://[2002:c000:8::]/", "6to4, carrying the dummy IPv4 address", NEVER),
    ("http://[::ffff:0:7f00:1]/", "IPv4-translated, carrying the loopback", NEVER),
    ("http://[3fff::1]/", "documentation", NEVER),
    ("http://[5f00::1]/", "segment routing", NEVER),
]


@pytest.fixture
def fake_dns(monkeypatch):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in FAKE_DNS:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in FAKE_DNS[host]
            ]
        assert host not in {"public.example"}, "only the fake resolver may answer for example names"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(("url", "fragment", "local"), URLS, ids=[u for u, _, _ in URLS])
def test_urls_resolving_to_non_global_addresses_are_refused(fake_dns, url, fragment, local):
    if fragment is None:
        assert resolve_checked(url, allow_private=False).address == FAKE_DNS["public.example"][0]
        return
    with pytest.raises(URLRefused, match="not globally routable") as refused:
        resolve_checked(url, allow_private=False)
    assert fragment in str(refused.value)
    # Local development may reach loopback and private addresses (KILN_WEBHOOK_ALLOW_PRIVATE,
    # KILN_IMAGE_FETCH_ALLOW_PRIVATE), never link-local, shared or the rest.
    if local:
        assert resolve_checked(url, allow_private=True).address
    else:
        with pytest.raises(URLRefused, match="not globally routable"):
            resolve_checked(url, allow_private=True)


def test_the_table_is_wide():
    assert len(ADDRESSES) + len(URLS) >= 40

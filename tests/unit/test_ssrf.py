"""The SSRF guard allows globally routable addresses only: one table of addresses and host names,
IPv4 and IPv6, IPv4 carried inside IPv6 (mapped, 6to4, NAT64, Teredo) included."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from shared.ssrf import URLRefused, forbidden_reason, resolve_checked

# (address, the phrase its refusal names, or None when it must pass)
ADDRESSES: list[tuple[str, str | None]] = [
    # IPv4 that is not globally routable.
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "private"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("100.100.100.200", "shared (carrier-grade NAT)"),  # a cloud metadata address
    ("100.127.255.255", "shared (carrier-grade NAT)"),
    ("192.0.0.170", "private"),
    ("192.0.2.1", "private"),  # TEST-NET-1
    ("198.18.0.1", "private"),  # benchmarking
    ("198.51.100.7", "private"),  # TEST-NET-2
    ("203.0.113.9", "private"),  # TEST-NET-3
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "private"),
    ("255.255.255.255", "private"),
    # IPv6 that is not globally routable.
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "private"),  # documentation
    ("100::1", "private"),  # discard-only
    ("::7f00:1", "IPv4-compatible"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    # IPv4 carried in IPv6: judged by the IPv4 address it reaches.
    ("::ffff:127.0.0.1", "IPv4-mapped, carrying the loopback IPv4 address 127.0.0.1"),
    ("::ffff:10.1.2.3", "IPv4-mapped, carrying the private IPv4 address 10.1.2.3"),
    ("::ffff:169.254.169.254", "IPv4-mapped, carrying the link-local IPv4 address 169.254.169.254"),
    ("2002::1", "6to4, carrying the unspecified IPv4 address 0.0.0.0"),
    ("2002:a00:1::1", "6to4, carrying the private IPv4 address 10.0.0.1"),
    ("2002:7f00:1::", "6to4, carrying the loopback IPv4 address 127.0.0.1"),
    ("2002:6440:1::1", "6to4, carrying the shared (carrier-grade NAT) IPv4 address 100.64.0.1"),
    ("64:ff9b::a00:1", "NAT64, carrying the private IPv4 address 10.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64, carrying the link-local IPv4 address 169.254.169.254"),
    ("64:ff9b::7f00:1", "NAT64, carrying the loopback IPv4 address 127.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo, carrying the private IPv4 address 10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo, carrying the private IPv4 address 192.0.2.45"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),  # carries 8.8.8.8, yet Teredo is not global
    # Globally routable: allowed.
    ("93.184.216.34", None),
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("2606:4700::1111", None),
    ("2620:4f:8000::1", None),
    ("::ffff:8.8.8.8", None),
    ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
    ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "reason"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_only_globally_routable_addresses_pass(address, reason):
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


# Host names and numeric forms the resolver turns into addresses: (URL, fragment of the refusal or None).
FAKE_DNS = {
    "metadata.internal.example": ["169.254.169.254"],
    "cgnat.example": ["100.100.100.200"],
    "rebind.example": ["93.184.216.34", "10.0.0.7"],  # every address counts, not just the first
    "v6private.example": ["fd00::5"],
    "sixtofour.example": ["2002:c0a8:101::1"],
    "nat64.example": ["64:ff9b::c0a8:101"],
    "public.example": ["93.184.216.34", "2606:4700::1111"],
}
URLS: list[tuple[str, str | None]] = [
    ("http://metadata.internal.example/latest/meta-data", "link-local"),
    ("http://cgnat.example/x.png", "carrier-grade NAT"),
    ("http://rebind.example/x.png", "10.0.0.7"),
    ("http://v6private.example/x.png", "unique-local"),
    ("http://sixtofour.example/x.png", "6to4, carrying the private IPv4 address 192.168.1.1"),
    ("http://nat64.example/x.png", "NAT64, carrying the private IPv4 address 192.168.1.1"),
    ("https://public.example/x.png", None),
    ("http://localhost:8080/hook", "loopback"),
    ("http://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
    ("http://0x7f000001/", "loopback"),  # ... as hex
    ("http://0177.0.0.1/", "loopback"),  # ... with an octal first part
    ("http://127.1/", "loopback"),  # ... shortened
    ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[0:0:0:0:0:ffff:169.254.169.254]/", "link-local"),
    ("http://[2002:a9fe:a9fe::]/", "6to4, carrying the link-local IPv4 address 169.254.169.254"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
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


@pytest.mark.parametrize(("url", "fragment"), URLS, ids=[u for u, _ in URLS])
def test_urls_resolving_to_non_global_addresses_are_refused(fake_dns, url, fragment):
    if fragment is None:
        assert resolve_checked(url, allow_private=False).address == FAKE_DNS["public.example"][0]
        return
    with pytest.raises(URLRefused, match="not globally routable") as refused:
        resolve_checked(url, allow_private=False)
    assert fragment in str(refused.value)
    # Local development may allow them (KILN_WEBHOOK_ALLOW_PRIVATE, KILN_IMAGE_FETCH_ALLOW_PRIVATE).
    assert resolve_checked(url, allow_private=True).address


def test_the_table_is_wide():
    assert len(ADDRESSES) + len(URLS) >= 40

"""The SSRF guard's one judgement of addresses: Kiln's table of the IANA special-purpose registries,
IPv4 and IPv6, with IPv4 carried inside IPv6 (mapped, translated, NAT64, 6to4, Teredo, compatible)
judged too, whatever the interpreter's ``ipaddress`` flags say; and host names resolved to them."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from shared.security.ssrf import URLRefused, forbidden_reason, pinned_request, redirect_target, resolve_checked
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
    "xn--bcher-kva.example": ["93.184.216.34"],  # bücher.example
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


@pytest.mark.parametrize(
    ("url", "host", "sni"),
    [
        # An internationalized name goes on the wire in its IDNA form (a Unicode Host header was a 500).
        ("http://bücher.example/x.png", "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("https://BÜCHER.example:8443/x.png", "xn--bcher-kva.example:8443", "xn--bcher-kva.example"),
        # An IPv6 literal is bracketed in the Host header (RFC 9110), never in the SNI.
        ("http://[2606:4700::1111]/x.png", "[2606:4700::1111]", "2606:4700::1111"),
        ("http://[2606:4700::1111]:8080/x.png", "[2606:4700::1111]:8080", "2606:4700::1111"),
        ("http://public.example:8080/x.png", "public.example:8080", "public.example"),
    ],
)
def test_the_host_header_and_sni_are_what_the_wire_takes(fake_dns, url, host, sni):
    target = resolve_checked(url, allow_private=False)
    _, headers, extensions = pinned_request(target, url)
    assert headers["host"] == host and extensions["sni_hostname"] == sni


def test_an_internationalized_name_resolves_in_its_idna_form(fake_dns):
    """The fullwidth spelling of a name maps to it (UTS 46), so the guard judges what is connected to."""
    assert resolve_checked("http://ｌｏｃａｌｈｏｓｔ/", allow_private=True).host == "localhost"
    with pytest.raises(URLRefused, match="loopback"):
        resolve_checked("http://ｌｏｃａｌｈｏｓｔ/", allow_private=False)
    with pytest.raises(URLRefused, match="not a valid internationalized domain name"):
        resolve_checked("http://bü" + "c" * 70 + ".example/", allow_private=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:0/x.png", "http://[::1]:0/x.png", "https://localhost:0/hook"])
def test_port_0_is_refused_not_replaced_by_the_default(url):
    with pytest.raises(URLRefused, match="invalid port"):
        resolve_checked(url, allow_private=True)


@pytest.mark.parametrize("url", ["http://[127.0.0.1]/x.png", "http://[::1/x.png"])
def test_a_url_urlsplit_refuses_is_refused_by_the_guard(url):
    with pytest.raises(URLRefused, match="not a valid URL"):
        resolve_checked(url, allow_private=True)
    with pytest.raises(URLRefused, match="not a valid URL"):
        redirect_target("https://public.example/", url.replace("http://", "https://"))

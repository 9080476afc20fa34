"""The SSRF guard for every outbound request (webhooks, image URLs): resolve the host once, allow
only globally routable addresses (``ipaddress``'s ``is_global``, IPv4 embedded in IPv6 included),
and connect to the address that was checked so DNS cannot be rebound in between."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address in their last 32 bits: NAT64 translates to it (RFC 6052's
# well-known prefix). The local-use NAT64 prefix (RFC 8215) reaches a private network: never global.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
# Deprecated IPv4-compatible addresses (::a.b.c.d, RFC 4291) and site-local ones (RFC 3879): Python
# 3.11 still calls some of them global; nothing routable lives there.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def _name(attribute: str) -> str:
    return attribute.removeprefix("is_").replace("_", "-")


class URLRefused(ValueError):
    """A URL that may not be called (SSRF guard); the message says why."""


def _ipv4_reason(address: ipaddress.IPv4Address) -> str | None:
    """Why an IPv4 address is not globally routable, or None when it is."""
    if address.is_global and not address.is_multicast:
        return None
    if address in _SHARED_ADDRESS_SPACE:
        return "shared (carrier-grade NAT)"
    for attribute in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(address, attribute):
            return _name(attribute)
    return "non-global"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 addresses an IPv6 address carries (and how), for the forms that route to them."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", [address.ipv4_mapped]
    if address.sixtofour is not None:
        return "6to4", [address.sixtofour]
    if address.teredo is not None:
        server, client = address.teredo
        return "Teredo", [server, client]
    if address in _NAT64:
        return "NAT64", [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return None


def _ipv6_reason(address: ipaddress.IPv6Address) -> str | None:
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        kind, inner = embedded
        for ipv4 in inner:
            reason = _ipv4_reason(ipv4)
            if reason is not None:
                return f"{kind}, carrying the {reason} IPv4 address {ipv4}"
        # Mapped, 6to4 and NAT64 addresses route to the IPv4 address they carry; Teredo is not global.
        return kind if kind == "Teredo" else None
    if address in _LOCAL_NAT64:
        return "local-use NAT64"
    if address in _IPV4_COMPATIBLE:
        return "unspecified" if address.is_unspecified else "loopback" if address.is_loopback else "IPv4-compatible"
    if address in _SITE_LOCAL:
        return "site-local"
    if address.is_global and not address.is_multicast:
        return None
    if address in _UNIQUE_LOCAL:
        return "unique-local"
    for attribute in ("is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(address, attribute):
            return _name(attribute)
    return "non-global"


def forbidden_reason(address: IPAddress) -> str | None:
    """Why an address is off limits for outbound requests (a phrase: "private", "loopback",
    "6to4, carrying the private IPv4 address 10.0.0.1"), or None when it is globally routable.

    Only ``is_global`` addresses pass; an IPv6 address that carries an IPv4 address (IPv4-mapped,
    6to4, NAT64, Teredo) passes only when that IPv4 address does."""
    if isinstance(address, ipaddress.IPv6Address):
        return _ipv6_reason(address)
    return _ipv4_reason(address)


@dataclass(frozen=True)
class ResolvedURL:
    """A URL whose host was resolved and checked; connect to ``address``, not the name again."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def resolve_checked(url: str, *, allow_private: bool) -> ResolvedURL:
    """Resolve the URL's host and refuse every address that is not globally routable (``forbidden_reason``).

    Returns the first acceptable address so the caller connects to what was checked, leaving no
    window for DNS rebinding.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise URLRefused(f"must be an http(s) URL, not {parts.scheme or 'relative'!r}")
    if not parts.hostname:
        raise URLRefused("URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise URLRefused("URL has an invalid port") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise URLRefused(f"host {parts.hostname!r} does not resolve") from None
    # Only IPv4 and IPv6 entries come back for a host name, and their address is a string.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason:
                raise URLRefused(
                    f"host {parts.hostname!r} resolves to the address {address}, "
                    f"which is not globally routable ({reason})"
                )
    return ResolvedURL(url=url, scheme=parts.scheme, host=parts.hostname, port=port, address=str(addresses[0]))


def pinned_request(target: ResolvedURL, url: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """URL, headers and httpx extensions that connect to the checked address while the Host
    header and TLS SNI keep the original name."""
    parts = urlsplit(url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    pinned = urlunsplit((parts.scheme, f"{address}:{target.port}", parts.path or "/", parts.query, ""))
    default_port = 443 if target.scheme == "https" else 80
    host = target.host if target.port == default_port else f"{target.host}:{target.port}"
    return pinned, {"host": host}, {"sni_hostname": target.host}


@cache
def pinned_client(timeout_s: float) -> httpx.Client:
    """The process's client for pinned requests (webhooks, image fetches); thread-safe, built once,
    since building one (its TLS context) costs about 30 ms.

    No keep-alive: requests go to pinned IP addresses, and a pooled TLS connection opened for one
    hostname must never carry a request for another hostname that resolves to the same address.
    Redirects are never followed here; callers check each hop.
    """
    return httpx.Client(
        timeout=timeout_s, follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    )

"""The SSRF guard for every outbound request (webhooks, image URLs): resolve the host once, refuse
loopback, private, link-local, unique-local and multicast addresses, and connect to the address
that was checked so DNS cannot be rebound in between."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import httpx


class URLRefused(ValueError):
    """A URL that may not be called (SSRF guard); the message says why."""


def forbidden_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is off limits for outbound requests, or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return forbidden_reason(address.ipv4_mapped)
    for attribute in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(address, attribute):
            return attribute.removeprefix("is_").replace("_", "-")
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.IPv6Network("fc00::/7"):
        return "unique-local"
    return None


@dataclass(frozen=True)
class ResolvedURL:
    """A URL whose host was resolved and checked; connect to ``address``, not the name again."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def resolve_checked(url: str, *, allow_private: bool) -> ResolvedURL:
    """Resolve the URL's host and refuse private, loopback, link-local and multicast addresses.

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
                raise URLRefused(f"host {parts.hostname!r} resolves to a {reason} address ({address})")
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

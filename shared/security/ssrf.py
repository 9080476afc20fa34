"""The SSRF guard for every outbound request (image URLs, LoRA files, webhooks): one judgement of
addresses, from Kiln's own table of the IANA special-purpose address registries, applied at
submission and again when connecting.

- **Addresses** (``forbidden_reason``): an address in a registry entry that is not globally
  reachable is refused, whatever the interpreter's ``ipaddress`` thinks (its ``is_global`` has
  changed between Python patch releases). IPv6 outside the global unicast space (``2000::/3``) is
  refused too. An IPv6 address that carries an IPv4 one is judged by that IPv4 address as well:
  IPv4-mapped, NAT64 (``64:ff9b::/96``) and 6to4 pass when it is global; IPv4-translated, local-use
  NAT64, Teredo and IPv4-compatible never pass.
- **Local development** (``KILN_IMAGE_FETCH_ALLOW_PRIVATE``, ``KILN_WEBHOOK_ALLOW_PRIVATE``) lets
  loopback, the private-use ranges (``10/8``, ``172.16/12``, ``192.168/16``) and unique-local IPv6
  through, and nothing else: link-local (cloud metadata at ``169.254.169.254``), shared
  ``100.64/10`` (another cloud's metadata) and the rest stay refused.
- **Connecting** (``guarded_request``): the host is resolved once, every address judged, and the
  request sent to the address that was checked (Host and SNI keep the name), so DNS cannot be
  rebound in between. Redirects are never followed by the client: a caller that follows them judges
  each hop again, and never leaves https for http (``redirect_target``).
- **Time** (``Deadline``): a request is cut off ``timeout_s`` after it starts, whatever it is doing.
  httpx's timeouts bound each connect, read and write alone, so a peer that trickles its answer a
  byte at a time would otherwise hold the caller (a webhook thread, an image fetch) for as long as
  it likes.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx
import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class URLRefused(ValueError):
    """A URL that may not be called (SSRF guard); the message says why."""


@dataclass(frozen=True)
class Block:
    """One entry of the special-purpose registries, as Kiln applies it."""

    network: IPNetwork
    name: str
    # The registry's "Globally Reachable": only these blocks may be contacted.
    reachable: bool = False
    # What the allow-private settings let through for local development.
    local: bool = False


def _block(network: str, name: str, *, reachable: bool = False, local: bool = False) -> Block:
    return Block(ipaddress.ip_network(network), name, reachable, local)


# The IANA IPv4 Special-Purpose Address Registry (iana-ipv4-special-registry), and multicast.
# 192.0.0.9 (PCP anycast) and 192.0.0.10 (TURN anycast) are globally reachable there, but what
# answers on them is a server inside the network Kiln runs in: they stay in the refused /24.
IPV4_BLOCKS = (
    _block("0.0.0.0/8", "this network"),
    _block("0.0.0.0/32", "unspecified"),
    _block("10.0.0.0/8", "private", local=True),
    _block("100.64.0.0/10", "shared (carrier-grade NAT)"),
    _block("127.0.0.0/8", "loopback", local=True),
    _block("169.254.0.0/16", "link-local"),
    _block("172.16.0.0/12", "private", local=True),
    _block("192.0.0.0/24", "IETF protocol assignments"),
    _block("192.0.0.0/29", "IPv4 service continuity"),
    _block("192.0.0.8/32", "dummy"),
    _block("192.0.0.170/31", "NAT64/DNS64 discovery"),
    _block("192.0.2.0/24", "documentation (TEST-NET-1)"),
    _block("192.31.196.0/24", "AS112-v4", reachable=True),
    _block("192.52.193.0/24", "AMT", reachable=True),
    _block("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    _block("192.168.0.0/16", "private", local=True),
    _block("192.175.48.0/24", "AS112 direct delegation", reachable=True),
    _block("198.18.0.0/15", "benchmarking"),
    _block("198.51.100.0/24", "documentation (TEST-NET-2)"),
    _block("203.0.113.0/24", "documentation (TEST-NET-3)"),
    _block("224.0.0.0/4", "multicast"),
    _block("240.0.0.0/4", "reserved"),
    _block("255.255.255.255/32", "limited broadcast"),
)

# The IANA IPv6 Special-Purpose Address Registry (iana-ipv6-special-registry), with the blocks of the
# IPv6 address space registry that are no destination (site-local, multicast). The forms that
# carry an IPv4 address are judged first (``EMBEDDED_IPV4``). The PCP, TURN and DNS-SD SRP anycast
# addresses (2001:1::1 to ::3) stay in the refused 2001::/23, as their IPv4 twins do.
IPV6_BLOCKS = (
    _block("::/128", "unspecified"),
    _block("::1/128", "loopback", local=True),
    _block("64:ff9b:1::/48", "local-use NAT64"),
    _block("100::/64", "discard-only"),
    _block("100:0:0:1::/64", "dummy IPv6 prefix"),
    _block("2001::/23", "IETF protocol assignments"),
    _block("2001:2::/48", "benchmarking"),
    _block("2001:3::/32", "AMT", reachable=True),
    _block("2001:4:112::/48", "AS112-v6", reachable=True),
    _block("2001:10::/28", "deprecated ORCHID"),
    _block("2001:20::/28", "ORCHIDv2", reachable=True),
    _block("2001:30::/28", "drone remote ID tags", reachable=True),
    _block("2001:db8::/32", "documentation"),
    _block("2620:4f:8000::/48", "AS112 direct delegation", reachable=True),
    _block("3fff::/20", "documentation"),
    _block("5f00::/16", "segment routing (SRv6) SIDs"),
    _block("fc00::/7", "unique-local", local=True),
    _block("fe80::/10", "link-local"),
    _block("fec0::/10", "site-local"),
    _block("ff00::/8", "multicast"),
)
# IANA assigns IPv6 unicast addresses from this block only; the rest is reserved by the IETF.
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _last_32_bits(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]


def _sixtofour(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)]


def _teredo(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The Teredo server (bits 32-63) and the client (the last 32 bits, inverted)."""
    value = int(address)
    return [ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF), ipaddress.IPv4Address(~value & 0xFFFFFFFF)]


@dataclass(frozen=True)
class EmbeddedForm:
    """IPv6 addresses that carry an IPv4 address (or two)."""

    network: ipaddress.IPv6Network
    name: str
    ipv4: Callable[[ipaddress.IPv6Address], list[ipaddress.IPv4Address]]
    # Whether a connection to it reaches the IPv4 address (and so may pass when that address does).
    routes_to_ipv4: bool


EMBEDDED_IPV4 = (
    EmbeddedForm(ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped", _last_32_bits, routes_to_ipv4=True),
    EmbeddedForm(ipaddress.IPv6Network("::ffff:0:0:0/96"), "IPv4-translated", _last_32_bits, routes_to_ipv4=False),
    EmbeddedForm(ipaddress.IPv6Network("64:ff9b::/96"), "NAT64", _last_32_bits, routes_to_ipv4=True),
    EmbeddedForm(ipaddress.IPv6Network("2002::/16"), "6to4", _sixtofour, routes_to_ipv4=True),
    EmbeddedForm(ipaddress.IPv6Network("2001::/32"), "Teredo", _teredo, routes_to_ipv4=False),
    # ::/96 without :: and ::1, which the blocks name.
    EmbeddedForm(ipaddress.IPv6Network("::/96"), "IPv4-compatible", _last_32_bits, routes_to_ipv4=False),
)


@dataclass(frozen=True)
class Refusal:
    """Why an address may not be contacted, and whether local development may contact it anyway."""

    reason: str
    local: bool = False


def _most_specific(address: IPAddress, blocks: tuple[Block, ...]) -> Block | None:
    matches = [block for block in blocks if address in block.network]
    return max(matches, key=lambda block: block.network.prefixlen, default=None)


def _judge_ipv4(address: ipaddress.IPv4Address) -> Refusal | None:
    block = _most_specific(address, IPV4_BLOCKS)
    if block is None or block.reachable:
        return None
    return Refusal(block.name, block.local)


def _judge_embedded(address: ipaddress.IPv6Address, form: EmbeddedForm) -> Refusal | None:
    for ipv4 in form.ipv4(address):
        inner = _judge_ipv4(ipv4)
        if inner is not None:
            reason = f"{form.name}, carrying the {inner.reason} IPv4 address {ipv4}"
            return Refusal(reason, inner.local and form.routes_to_ipv4)
    return None if form.routes_to_ipv4 else Refusal(form.name)


def _judge_ipv6(address: ipaddress.IPv6Address) -> Refusal | None:
    block = _most_specific(address, IPV6_BLOCKS)
    # :: and ::1 lie in ::/96 (IPv4-compatible) but are named blocks of their own.
    if block is None or block.network.prefixlen < 128:
        form = next((form for form in EMBEDDED_IPV4 if address in form.network), None)
        if form is not None:
            return _judge_embedded(address, form)
    if block is not None:
        return None if block.reachable else Refusal(block.name, block.local)
    if address not in GLOBAL_UNICAST:
        return Refusal("reserved, outside the global unicast 2000::/3")
    return None


def judge(address: IPAddress) -> Refusal | None:
    """Why ``address`` may not be contacted, or None when it may (see the module's docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        return _judge_ipv6(address)
    return _judge_ipv4(address)


def forbidden_reason(address: IPAddress, allow_private: bool = False) -> str | None:
    """Why an address is off limits for outbound requests (a phrase: "private", "loopback",
    "6to4, carrying the private IPv4 address 10.0.0.1"), or None when it may be contacted.

    ``allow_private`` (local development) lets loopback, private-use and unique-local addresses
    through (also when carried in IPv4-mapped, NAT64 or 6to4 form), nothing else."""
    refusal = judge(address)
    if refusal is None or (allow_private and refusal.local):
        return None
    return refusal.reason


@dataclass(frozen=True)
class ResolvedURL:
    """A URL whose host was resolved and checked; connect to ``address``, not the name again."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def resolve_checked(url: str, *, allow_private: bool) -> ResolvedURL:
    """Resolve the URL's host and refuse it when any of its addresses may not be contacted
    (``forbidden_reason``). Returns the first address, for the caller to connect to what was checked."""
    parts = _split(url)
    if parts.scheme not in {"http", "https"}:
        raise URLRefused(f"must be an http(s) URL, not {parts.scheme or 'relative'!r}")
    if not parts.hostname:
        raise URLRefused("URL has no host")
    host = ascii_host(parts.hostname)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # 0 is no port a server listens on: never replaced by the scheme's default
        raise URLRefused("URL has an invalid port")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise URLRefused(f"host {parts.hostname!r} does not resolve") from None
    # Only IPv4 and IPv6 entries come back for a host name, and their address is a string.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        reason = forbidden_reason(address, allow_private)
        if reason:
            raise URLRefused(
                f"host {parts.hostname!r} resolves to the address {address}, which is not globally routable ({reason})"
            )
    return ResolvedURL(url=url, scheme=parts.scheme, host=host, port=port, address=str(addresses[0]))


def _split(url: str) -> SplitResult:
    """``urlsplit``, its refusals (a bracketed host that is no IPv6 address, one not closed) as ``URLRefused``."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise URLRefused(f"not a valid URL ({exc})") from None


def ascii_host(hostname: str) -> str:
    """The host as it goes on the wire (resolved, and in the Host header and TLS SNI): an internationalized
    name in its IDNA (punycode) form, as a browser writes it; an ASCII one as it is (``_`` included)."""
    if hostname.isascii():
        return hostname
    try:
        return idna.encode(hostname, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise URLRefused(f"host {hostname!r} is not a valid internationalized domain name ({exc})") from None


def redirect_target(url: str, location: str) -> str:
    """Where a redirect from ``url`` leads; refused when it leaves https (the host of the target is
    judged when it is requested)."""
    try:
        target = urljoin(url, location)
    except ValueError as exc:
        raise URLRefused(f"redirects to {location!r}, which is not a valid URL ({exc})") from None
    if urlsplit(url).scheme == "https" and _split(target).scheme != "https":
        raise URLRefused(f"redirects to {target}, which is not https: a redirect may not leave https")
    return target


def pinned_request(target: ResolvedURL, url: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """URL, headers and httpx extensions that connect to the checked address while the Host
    header and TLS SNI keep the original name."""
    parts = urlsplit(url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    pinned = urlunsplit((parts.scheme, f"{address}:{target.port}", parts.path or "/", parts.query, ""))
    default_port = 443 if target.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal, as RFC 9110 writes it
    host = name if target.port == default_port else f"{name}:{target.port}"
    return pinned, {"host": host}, {"sni_hostname": target.host}


@cache
def pinned_client(timeout_s: float) -> httpx.Client:
    """The process's client for pinned requests (webhooks, image and LoRA fetches); thread-safe,
    built once, since building one (its TLS context) costs about 30 ms.

    No keep-alive: requests go to pinned IP addresses, and a pooled TLS connection opened for one
    hostname must never carry a request for another hostname that resolves to the same address.
    Redirects are never followed here; callers check each hop (``redirect_target``).
    """
    return httpx.Client(
        timeout=timeout_s, follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    )


@contextmanager
def guarded_request(
    method: str,
    url: str,
    *,
    allow_private: bool,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
) -> Iterator[httpx.Response]:
    """Send one request through the guard and stream its response: the host resolved and judged
    (``resolve_checked``, ``URLRefused`` when refused), the connection made to the checked address.
    Redirects are answers like any other."""
    target = resolve_checked(url, allow_private=allow_private)
    pinned, host_header, extensions = pinned_request(target, url)
    deadline = Deadline(timeout_s)
    try:
        with pinned_client(timeout_s).stream(
            method,
            pinned,
            headers={**(headers or {}), **host_header},
            content=content,
            extensions={**extensions, "trace": deadline.trace},
        ) as response:
            yield response
    except httpx.TransportError as exc:
        if deadline.expired:
            raise httpx.ReadTimeout(f"no whole answer within {timeout_s:g} s") from exc
        raise
    finally:
        deadline.cancel()


class Deadline:
    """Cuts one request's connection ``timeout_s`` after it was made: the socket is shut down, so whatever
    read or write the request is blocked in ends at once (``guarded_request`` then raises a timeout).

    The connection is learned from httpcore's ``trace`` extension (its ``connect_tcp`` event), which
    ``guarded_request`` passes with the request; with no keep-alive, every request has its own."""

    def __init__(self, timeout_s: float) -> None:
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            with self._lock:
                self._socket = info["return_value"].get_extra_info("socket")
                if self.expired:
                    self._cut()

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        if self._socket is not None:
            with suppress(OSError):  # closed already: the request ended as the deadline came
                self._socket.shutdown(socket.SHUT_RDWR)

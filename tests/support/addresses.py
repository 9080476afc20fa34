"""Addresses and the SSRF table's verdicts on them (None: allowed), for every guard's tests."""

from __future__ import annotations

# (address, the phrase its refusal names, or None when it must pass)
ADDRESSES: list[tuple[str, str | None]] = [
    # The IPv4 special-purpose registry, an address of each entry.
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("100.100.100.200", "shared (carrier-grade NAT)"),  # a cloud metadata address
    ("100.127.255.255", "shared (carrier-grade NAT)"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.1", "IPv4 service continuity"),
    ("192.0.0.8", "dummy"),
    ("192.0.0.9", "IETF protocol assignments"),  # PCP anycast: a server in Kiln's own network
    ("192.0.0.10", "IETF protocol assignments"),  # TURN anycast, likewise
    ("192.0.0.11", "IETF protocol assignments"),
    ("192.0.0.100", "IETF protocol assignments"),
    ("192.0.0.170", "NAT64/DNS64 discovery"),
    ("192.0.0.171", "NAT64/DNS64 discovery"),
    ("192.0.0.200", "IETF protocol assignments"),
    ("192.0.0.255", "IETF protocol assignments"),
    ("192.0.2.1", "documentation (TEST-NET-1)"),
    ("192.31.196.1", None),  # AS112-v4: globally reachable
    ("192.52.193.1", None),  # AMT: globally reachable
    ("192.88.99.1", "deprecated 6to4 relay anycast"),
    ("192.168.1.1", "private"),
    ("192.175.48.1", None),  # AS112 direct delegation: globally reachable
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation (TEST-NET-2)"),
    ("203.0.113.9", "documentation (TEST-NET-3)"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "limited broadcast"),
    # The IPv6 special-purpose registry, an address of each entry, and the rest of the non-global space.
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("100::1", "discard-only"),
    ("100:0:0:1::1", "dummy IPv6 prefix"),
    ("2001:1::1", "IETF protocol assignments"),  # PCP anycast
    ("2001:1::3", "IETF protocol assignments"),
    ("2001:2::1", "benchmarking"),
    ("2001:3::1", None),  # AMT
    ("2001:4:112::1", None),  # AS112-v6
    ("2001:10::1", "deprecated ORCHID"),
    ("2001:20::1", None),  # ORCHIDv2
    ("2001:30::1", None),  # drone remote ID tags
    ("2001:1ff::1", "IETF protocol assignments"),
    ("2001:db8::1", "documentation"),
    ("2620:4f:8000::1", None),  # AS112 direct delegation
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation"),
    ("5f00::1", "segment routing (SRv6) SIDs"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("1::1", "reserved, outside the global unicast 2000::/3"),
    ("4000::1", "reserved, outside the global unicast 2000::/3"),
    ("e000::1", "reserved, outside the global unicast 2000::/3"),
    # IPv4 carried in IPv6: judged by the IPv4 address it carries, and by the form.
    ("::ffff:127.0.0.1", "IPv4-mapped, carrying the loopback IPv4 address 127.0.0.1"),
    ("::ffff:10.1.2.3", "IPv4-mapped, carrying the private IPv4 address 10.1.2.3"),
    ("::ffff:169.254.169.254", "IPv4-mapped, carrying the link-local IPv4 address 169.254.169.254"),
    ("::ffff:192.0.0.8", "IPv4-mapped, carrying the dummy IPv4 address 192.0.0.8"),
    ("::ffff:0:7f00:1", "IPv4-translated, carrying the loopback IPv4 address 127.0.0.1"),
    ("::ffff:0:808:808", "IPv4-translated"),  # carries 8.8.8.8, yet translated addresses are not global
    ("64:ff9b::a00:1", "NAT64, carrying the private IPv4 address 10.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64, carrying the link-local IPv4 address 169.254.169.254"),
    ("64:ff9b::7f00:1", "NAT64, carrying the loopback IPv4 address 127.0.0.1"),
    ("64:ff9b::c000:8", "NAT64, carrying the dummy IPv4 address 192.0.0.8"),
    ("2002::1", "6to4, carrying the unspecified IPv4 address 0.0.0.0"),
    ("2002:a00:1::1", "6to4, carrying the private IPv4 address 10.0.0.1"),
    ("2002:7f00:1::", "6to4, carrying the loopback IPv4 address 127.0.0.1"),
    ("2002:6440:1::1", "6to4, carrying the shared (carrier-grade NAT) IPv4 address 100.64.0.1"),
    ("2002:c000:8::", "6to4, carrying the dummy IPv4 address 192.0.0.8"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo, carrying the private IPv4 address 10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo, carrying the documentation (TEST-NET-1) IPv4 address 192.0.2.45"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),  # carries 8.8.8.8, yet Teredo is not global
    ("::7f00:1", "IPv4-compatible, carrying the loopback IPv4 address 127.0.0.1"),
    ("::808:808", "IPv4-compatible"),
    # Globally routable: allowed.
    ("93.184.216.34", None),
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("100.128.0.1", None),  # just past the shared address space
    ("172.32.0.1", None),
    ("192.0.1.1", None),  # just past the IETF protocol assignments
    ("198.20.0.1", None),
    ("2606:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("2001:200::1", None),  # just past 2001::/23
    ("3fff:1000::1", None),  # just past the 3fff::/20 documentation block
    ("::ffff:8.8.8.8", None),
    ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
    ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
]


# What the allow-private settings let through besides (local development): loopback, private-use
# and unique-local, also when an IPv6 form that routes to the IPv4 address carries them.
LOCAL_DEVELOPMENT = {
    "10.0.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "172.16.5.4",
    "172.31.255.255",
    "192.168.1.1",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "2002:a00:1::1",
    "2002:7f00:1::",
}

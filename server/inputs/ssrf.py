"""Which addresses an image URL may reach: IP-literal parsing, public/non-public classification, the allow-list.

Pure functions, no I/O; `server.inputs.fetch` applies them to every address it is about to connect to.

An address is public only if no rule below calls it otherwise. The rules are explicit (IANA special-purpose
registries) rather than `ipaddress.is_global` alone, whose answers differ between Python releases (3.11 calls
multicast and the local-use NAT64 prefix global); `is_global` is then asked as a second opinion.
IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are judged by the IPv4 address inside.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import unquote

IPAddress = IPv4Address | IPv6Address

_V4_RULES: list[tuple[IPv4Network, str]] = [
    (IPv4Network(net), reason)
    for net, reason in [
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "link-local, cloud metadata"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    ]
]

_V6_RULES: list[tuple[IPv6Network, str]] = [
    (IPv6Network(net), reason)
    for net, reason in [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("2001::/23", "IETF protocol assignments"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "SRv6 SIDs"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
]

_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")


def non_public_reason(ip: IPAddress) -> str | None:
    """None if `ip` is a public address; otherwise a short phrase saying what it is ("loopback", ...)."""
    if isinstance(ip, IPv6Address):
        if ip.scope_id:  # only meaningful on a local link
            bare = IPv6Address(str(ip).split("%", 1)[0])
            return f"{non_public_reason(bare) or 'an address'} with a zone id"
        embedded = _embedded_ipv4(ip)
        if embedded:  # judged entirely by the IPv4 addresses inside
            for label, inner in embedded:
                reason = non_public_reason(inner)
                if reason:
                    return f"{label} {inner}, {reason}"
            return None
        for net, reason in _V6_RULES:
            if ip in net:
                return reason
        if ip not in _GLOBAL_UNICAST:
            return "reserved"
    else:
        for net, reason in _V4_RULES:
            if ip in net:
                return reason
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of the form."""
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip in _NAT64:
        return [("NAT64 of", IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip.sixtofour is not None:
        return [("6to4 of", ip.sixtofour)]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo client", client), ("Teredo server", server)]
    return []


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host names literally, or None for a host name.

    IPv4 is read the way inet_aton (and so getaddrinfo) reads it: 1 to 4 parts, each decimal, 0x-hex or
    0-octal, the last part filling the remaining bytes (`127.1`, `2852039166`, `0xA9FEA9FE`, `0251.0376.43518`),
    with an optional trailing dot. IPv6 may come with brackets and a zone id (`fe80::1%25eth0`).
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return IPv6Address(unquote(host))
        except ValueError:
            return None
    return _parse_legacy_ipv4(host)


def _parse_legacy_ipv4(host: str) -> IPv4Address | None:
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    if part[:2].lower() == "0x":
        digits, base = part[2:] or "0", 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


class AllowList:
    """Hosts and networks the operator opened although they are not public (any port, too).

    Entries: host names ("images.internal", matched exactly, case-insensitive), addresses ("127.0.0.1",
    "::1") and CIDR networks ("10.0.0.0/8", "fd00::/8").
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[IPv4Network | IPv6Network] = []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.hosts.add(entry.rstrip("."))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, ip: IPAddress) -> bool:
        if isinstance(ip, IPv6Address) and ip.scope_id:
            ip = IPv6Address(str(ip).split("%", 1)[0])
        return any(ip.version == net.version and ip in net for net in self.networks)

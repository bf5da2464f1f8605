"""Which network addresses the fetcher may contact.

URL lists are untrusted: a row may point at a cloud metadata service or at the user's own
network. The check runs twice: on IP-literal hosts before a request, and on every address a
host name resolves to (inside the resolver, so a DNS answer cannot smuggle a private address
past it, and redirects are covered because each hop resolves again).

Two tiers: what is refused always (link-local, known metadata addresses, the shared and IETF
ranges below: no image host of a URL list lives there, and the option below must not open
them), and what ``allow_private_addresses`` opens (private and loopback ranges: a user's own
test server or intranet mirror).
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import AsyncResolver, DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Times c-ares sends a lookup before giving up. Why more than resolv.conf's usual 2: c-ares
# times an attempt out at 5x the server's recent average answer time (250 ms at least), and a
# long tail's cold lookups (tens of ms, a few far slower) sit beside cached ones that answer
# at once, so a slow cold answer or one lost datagram under load used to fail the name's rows
# (each try doubles the wait: 4 tries cover about 4 s).
DNS_TRIES = 4

# Host names of cloud metadata endpoints; their addresses are refused anyway, but a resolver
# could map them elsewhere, so they are refused by name too.
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)

# Instance-local services of cloud providers outside the link-local ranges (those are refused
# as a whole). Listed here so that no option, and no range arithmetic, can ever open them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, OpenStack, ... (link-local too)
        "169.254.170.2",  # AWS ECS task metadata and credentials (link-local too)
        "fd00:ec2::254",  # AWS instance metadata over IPv6 (inside fc00::/7, a private range)
        "fd00:ec2::253",  # AWS DNS resolver over IPv6
        "fd00:ec2::123",  # AWS time service over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata (inside 100.64.0.0/10)
        "192.0.0.192",  # Oracle Cloud legacy metadata (inside 192.0.0.0/24)
        "168.63.129.16",  # Azure WireServer (a public address, answered by the host)
    )
)

# Ranges refused whatever allow_private_addresses says: neither public nor a user's own network.
ALWAYS_REFUSED_NETWORKS = (
    # RFC 6598 shared address space: carrier-grade NAT, and where Alibaba Cloud puts metadata.
    ipaddress.ip_network("100.64.0.0/10"),
    # RFC 6890 IETF protocol assignments (DS-Lite, NAT64 discovery, Oracle's old metadata).
    ipaddress.ip_network("192.0.0.0/24"),
)


class AddressRefused(OSError):
    """Raised when a URL's host is, or resolves only to, an address we must not contact."""


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host denotes in the forms ``inet_aton`` accepts, or None.

    Why: ``ipaddress`` only knows the dotted quad, but resolvers fold ``2130706433``,
    ``127.1``, ``0177.0.0.1`` and ``0x7f.1`` onto 127.0.0.1. Parsed here (not with
    ``socket.inet_aton``, which is platform-dependent and accepts trailing garbage on glibc)
    so the verdict does not depend on the resolver. One to four dot-separated parts, each
    decimal, ``0x`` hex or leading-zero octal; the last part fills the remaining bytes.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        lowered = part.lower()
        if lowered.startswith("0x"):
            digits, base = lowered[2:], 16
            if not digits:
                digits = "0"  # inet_aton reads a bare 0x as zero
            if any(c not in "0123456789abcdef" for c in digits):
                return None
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
            if any(c not in "01234567" for c in digits):
                return None
        else:
            digits, base = part, 10
            if not digits or any(c not in "0123456789" for c in digits):
                return None
        values.append(int(digits, base))
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for i, value in enumerate(leading):
        number |= value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def canonical_host(host: str) -> str:
    """``host`` as the network sees it: a numeric IPv4 spelling becomes its dotted quad.

    Browsers (the WHATWG URL standard) do the same; names and IPv6 literals are unchanged.
    """
    address = legacy_ipv4(host.rstrip("."))
    return host if address is None else str(address)


def _parse(address: str) -> IPAddress | None:
    text = address.strip("[]").split("%", 1)[0].rstrip(".")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return legacy_ipv4(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# Why cached: every request checks its host and every lookup its addresses, and a long tail's
# origins are asked for three policy files and an image in a row (the checks were 2-3 % of the
# run's CPU). Pure functions of their arguments; refusals raise, and are not cached.
_CHECKS_CACHED = 8192


@functools.lru_cache(maxsize=_CHECKS_CACHED)
def refusal_reason(address: str, allow_private: bool) -> str | None:
    """Why ``address`` (an IP in any spelling) may not be contacted, or None if it may."""
    ip = _parse(address)
    if ip is None:
        return None  # a name: its addresses are checked when it resolves
    shown = address if str(ip) == address else f"{address} ({ip})"
    if ip.is_link_local:
        return f"refused to contact link-local address {shown} (cloud metadata range)"
    if ip in METADATA_ADDRESSES:
        return f"refused to contact cloud metadata address {shown}"
    for network in ALWAYS_REFUSED_NETWORKS:
        if ip in network:
            return f"refused to contact address {shown} in {network} (shared or special-purpose range)"
    # ::1 sits inside ::/8, which ipaddress calls reserved; it is loopback like 127.0.0.1.
    if ip.is_multicast or ip.is_unspecified or (ip.is_reserved and not ip.is_loopback):
        return f"refused to contact non-unicast address {shown}"
    if not allow_private and (ip.is_private or ip.is_loopback):
        return f"refused to contact private address {shown} (set allow_private_addresses to permit)"
    return None


@functools.lru_cache(maxsize=_CHECKS_CACHED)
def check_host(host: str, allow_private: bool) -> str:
    """Refuse metadata host names and disallowed IP literals before any connection is made.

    Returns the host to connect to: :func:`canonical_host` of ``host``, so a numeric spelling
    that passed is requested as the address it was judged as.
    """
    name = host.strip("[]").rstrip(".").lower()
    if name in METADATA_HOSTNAMES:
        raise AddressRefused(f"refused to contact cloud metadata host {host}")
    reason = refusal_reason(name, allow_private)
    if reason:
        raise AddressRefused(reason)
    return canonical_host(host)


def _inner_resolver() -> AbstractResolver:
    """c-ares (aiodns) where installed: lookups on the event loop, not on a small thread pool
    per process (a long tail of names spends tens of milliseconds per cold lookup)."""
    try:
        return AsyncResolver(tries=DNS_TRIES)
    except RuntimeError:  # aiodns missing
        return DefaultResolver()


class SafeResolver(AbstractResolver):
    """Wraps aiohttp's resolver and drops every address we may not contact."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = _inner_resolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        check_host(host, self._allow_private)
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if refusal_reason(r["host"], self._allow_private) is None]
        if not allowed:
            reason = refusal_reason(results[0]["host"], self._allow_private) if results else None
            raise AddressRefused(f"{host} resolves only to refused addresses: {reason}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()

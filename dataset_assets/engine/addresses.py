"""Which network addresses the fetcher may contact.

URL lists are untrusted: a row may point at a cloud metadata service or at the user's own
network. The check runs twice: on IP-literal hosts before a request, and on every address a
host name resolves to (inside the resolver, so a DNS answer cannot smuggle a private address
past it, and redirects are covered because each hop resolves again).
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import AsyncResolver, DefaultResolver

# Host names of cloud metadata endpoints; their addresses are link-local anyway, but a
# resolver could map them elsewhere, so they are refused by name too.
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
    }
)


class AddressRefused(OSError):
    """Raised when a URL's host is, or resolves only to, an address we must not contact."""


def refusal_reason(address: str, allow_private: bool) -> str | None:
    """Why ``address`` may not be contacted, or None if it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return f"refused to contact link-local address {address} (cloud metadata range)"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return f"refused to contact non-unicast address {address}"
    if not allow_private and (ip.is_private or ip.is_loopback):
        return f"refused to contact private address {address} (set allow_private_addresses to permit)"
    return None


def check_host(host: str, allow_private: bool) -> None:
    """Refuse metadata host names and disallowed IP literals before any connection is made."""
    name = host.strip("[]").rstrip(".").lower()
    if name in METADATA_HOSTNAMES:
        raise AddressRefused(f"refused to contact cloud metadata host {host}")
    reason = refusal_reason(name, allow_private)
    if reason:
        raise AddressRefused(reason)


def _inner_resolver() -> AbstractResolver:
    """c-ares (aiodns) where installed: lookups on the event loop, not on a small thread pool
    per process (a long tail of names spends tens of milliseconds per cold lookup)."""
    try:
        return AsyncResolver()
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

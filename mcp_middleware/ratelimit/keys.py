"""Who a limit counts against: key functions.

A key function maps a request to the identity its buckets are keyed on. The default,
:class:`CallerKey`, is the authenticated principal (client, subject, issuer) when auth ran,
else the client's IP address. Forwarding headers (`X-Forwarded-For`, `Forwarded`) are read
only when the peer that sent them is a proxy you trust; anyone else could write any address
there and get a fresh bucket per request.

Whatever a key function returns is hashed by the limiter before it becomes a storage key, so
huge or unicode subjects cost one hash and never reach Redis as they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Literal

from starlette.types import Scope

from mcp_middleware.core import McpRequest, get_principal
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY

__all__ = ["CallerKey", "KeyFunction", "global_key"]

KeyFunction = Callable[[Scope, McpRequest], str]
"""`(scope, request) -> identity`; the limiter hashes the result, so any string is safe."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_HOPS = 32
"""Forwarding entries looked at, from the right: a proxy chain is short, a forged header need not be."""


def global_key(scope: Scope, request: McpRequest) -> str:
    """One bucket for everyone: a global limit for the server (mount) the middleware is in front of."""
    return "*"


class CallerKey:
    """The caller's principal if authenticated, else the client address.

    `trusted_proxies` lists the addresses or networks of your own proxies/load balancers
    (`"10.0.0.0/8"`, `"127.0.0.1"`). Only when the TCP peer is one of them is the
    forwarding header `header` read, right to left, skipping trusted hops: the first
    untrusted address is the client. An entry there that is not an IP address (forged or
    obfuscated) counts as the proxy that handed it over, so junk never mints new buckets.

    >>> key = CallerKey(trusted_proxies=["10.0.0.0/8"])
    >>> scope = {"type": "http", "client": ("10.1.2.3", 5000),
    ...          "headers": [(b"x-forwarded-for", b"1.2.3.4, 203.0.113.9, 10.9.9.9")]}
    >>> key.client_address(scope)
    '203.0.113.9'
    """

    __slots__ = ("_networks", "header")

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] = (),
        header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
    ) -> None:
        if header not in ("x-forwarded-for", "forwarded"):
            raise ValueError("header must be 'x-forwarded-for' or 'forwarded'")
        self._networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in trusted_proxies
        )
        self.header = header

    def __call__(self, scope: Scope, request: McpRequest) -> str:
        if PRINCIPAL_SCOPE_KEY in scope:
            principal = get_principal(scope)
            if principal.authenticated:
                return "principal:" + principal.key
        return "address:" + self.client_address(scope)

    def client_address(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if not self._networks:
            return peer
        peer_ip = _parse_ip(peer)
        if peer_ip is None or not self._trusted(peer_ip):
            return peer
        name = self.header.encode("latin-1")
        values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]
        hops = _forwarded_for(values) if self.header == "forwarded" else _x_forwarded_for(values)
        address = peer_ip
        for hop in reversed(hops[-_MAX_HOPS:]):
            ip = _parse_ip(hop)
            if ip is None:
                break  # junk: keep the last address a trusted hop vouched for
            address = ip
            if not self._trusted(ip):
                break
        return address.compressed

    def _trusted(self, ip: IpAddress) -> bool:
        return any(ip in network for network in self._networks)


def _x_forwarded_for(values: list[str]) -> list[str]:
    return [hop.strip() for value in values for hop in value.split(",")]


def _forwarded_for(values: list[str]) -> list[str]:
    """The `for=` of each element of RFC 7239 `Forwarded` headers (elements lacking one count as junk)."""
    hops = []
    for value in values:
        for element in value.split(","):
            found = "unknown"
            for pair in element.split(";"):
                name, _, text = pair.strip().partition("=")
                if name.lower() == "for":
                    found = text.strip().strip('"')
            hops.append(found)
    return hops


def _parse_ip(text: str) -> IpAddress | None:
    """An address from `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`; `None` for anything else."""
    if len(text) > 64:
        return None
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None

"""Who a limit counts against: key functions.

A key function maps a request to the identity its buckets are keyed on. The default,
:class:`CallerKey`, is the authenticated principal (client, subject, issuer) when auth ran,
else the client's IP address (for IPv6, its /64 network: one host holds a whole /64).
Forwarding headers (`X-Forwarded-For`, `Forwarded`) are read only when the peer that sent
them is a proxy you trust; anyone else could write any address there and get a fresh bucket
per request.

The principal's fields are length-prefixed (:func:`principal_identity`), so no choice of
subject or client id (Auth0 subjects hold `|`) can spell another principal's key. Whatever a
key function returns is hashed by the limiter before it becomes a storage key, so huge or
unicode subjects cost one hash and never reach Redis as they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal, TypeVar

from starlette.types import Scope

from mcp_middleware.core import McpRequest, Principal, get_principal
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY
from mcp_middleware.core.request import KeyFunction

__all__ = ["CallerKey", "KeyFunction", "global_key", "principal_identity"]

"""`(scope, request) -> identity`; the limiter hashes the result, so any string is safe."""

_K = TypeVar("_K")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_HOPS = 32
"""Forwarding entries looked at, from the right: a proxy chain is short, a forged header need not be."""
_REMEMBERED = 4096
"""Entries each of a `CallerKey`'s tables holds before it is cleared."""
_REMEMBERED_LENGTH = 512
"""Longer identities and addresses are computed each time, never kept."""


def global_key(scope: Scope, request: McpRequest) -> str:
    """One bucket for everyone: a global limit for the server (mount) the middleware is in front of."""
    return "*"


def _field(value: str | None) -> str:
    return "-" if value is None else f"{len(value)}:{value}"


def principal_identity(principal: Principal) -> str:
    """An injective encoding of (client id, subject, issuer): each field length-prefixed, `-` for none.

    >>> principal_identity(Principal(subject="auth0|abc", client_id="app"))
    '3:app|9:auth0|abc|-'
    >>> principal_identity(Principal(subject="b|c", client_id="a")) != principal_identity(
    ...     Principal(subject="c", client_id="a|b"))
    True
    """
    return f"{_field(principal.client_id)}|{_field(principal.subject)}|{_field(principal.issuer)}"


class CallerKey:
    """The caller's principal if authenticated, else the client address.

    `trusted_proxies` lists the addresses or networks of your own proxies/load balancers
    (`"10.0.0.0/8"`, `"127.0.0.1"`). Only when the TCP peer is one of them is the
    forwarding header `header` read, right to left, skipping trusted hops: the first
    untrusted address is the client. An entry there that is not an IP address (forged or
    obfuscated) counts as the proxy that handed it over, so junk never mints new buckets.

    Anonymous IPv6 callers share one bucket per `/ipv6_prefix` network (default 64: an ISP
    hands each customer a /64 or more, so one attacker has 2^64 addresses, not one);
    `ipv6_prefix=128` keys on the exact address. IPv4-mapped IPv6 addresses count as IPv4.

    >>> key = CallerKey(trusted_proxies=["10.0.0.0/8"])
    >>> scope = {"type": "http", "client": ("10.1.2.3", 5000),
    ...          "headers": [(b"x-forwarded-for", b"1.2.3.4, 203.0.113.9, 10.9.9.9")]}
    >>> key.client_address(scope)
    '203.0.113.9'
    >>> key.address_bucket("2001:db8:1:2:aaaa::1"), key.address_bucket("203.0.113.9")
    ('2001:db8:1:2::/64', '203.0.113.9')
    """

    __slots__ = ("_addresses", "_identities", "_networks", "header", "ipv6_prefix")

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] = (),
        header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
        ipv6_prefix: int = 64,
    ) -> None:
        if header not in ("x-forwarded-for", "forwarded"):
            raise ValueError("header must be 'x-forwarded-for' or 'forwarded'")
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be an integer between 1 and 128")
        self._networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in trusted_proxies
        )
        self.header = header
        self.ipv6_prefix = ipv6_prefix
        # Both are pure functions of their key, asked on every request: remembered in small bounded tables
        # (cleared when full; a flood of new callers only costs the computation again).
        self._identities: dict[tuple[str | None, str | None, str | None], str] = {}
        self._addresses: dict[str, str] = {}

    def __call__(self, scope: Scope, request: McpRequest) -> str:
        if PRINCIPAL_SCOPE_KEY in scope:
            principal = get_principal(scope)
            if principal.authenticated:
                fields = (principal.client_id, principal.subject, principal.issuer)
                identity = self._identities.get(fields)
                if identity is None:
                    identity = "principal:" + principal_identity(principal)
                    if len(identity) <= _REMEMBERED_LENGTH:
                        _remember(self._identities, fields, identity)
                return identity
        return "address:" + self.address_bucket(self.client_address(scope))

    @property
    def reads_headers(self) -> bool:
        """Whether an anonymous caller's address may come from a forwarding header (trusted proxies given)."""
        return bool(self._networks)

    def address_bucket(self, address: str) -> str:
        """What an anonymous caller at `address` is keyed on: the address, or its IPv6 network."""
        bucket = self._addresses.get(address)
        if bucket is None:
            bucket = self._address_bucket(address)
            if len(address) <= _REMEMBERED_LENGTH:
                _remember(self._addresses, address, bucket)
        return bucket

    def _address_bucket(self, address: str) -> str:
        ip = _parse_ip(address)
        if not isinstance(ip, ipaddress.IPv6Address):
            return address
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.compressed
        if self.ipv6_prefix == 128:
            return ip.compressed
        return ipaddress.IPv6Network((int(ip), self.ipv6_prefix), strict=False).compressed

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


def _remember(table: dict[_K, str], key: _K, value: str) -> None:
    if len(table) >= _REMEMBERED:
        table.clear()
    table[key] = value

"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document): fetched safely.

A client may use an HTTPS URL as its `client_id`; the authorization server fetches the JSON
document there. The URL comes from anyone, so the fetch is an SSRF and resource-exhaustion
surface:

- the host name is resolved once, every address is checked (public only, unless private
  hosts are allowed), and the connection goes to a checked address, with the original name
  as `Host` and TLS server name, so a second DNS answer (rebinding) is never consulted;
- the body is read as a stream and the read stops past `max_bytes` (a declared
  `Content-Length` over the bound is refused before reading); compressed bodies are not
  asked for and refused, so the bound is on what is parsed;
- no redirects, a timeout, and `Connection: close` (a connection made for one name is never
  reused for another).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import orjson

from mcp_middleware.core.errors import McpMiddlewareError

from .storage import RegisteredClient

__all__ = [
    "MAX_METADATA_DOCUMENT",
    "MetadataDocumentFetcher",
    "Resolver",
    "UnusableDocument",
    "client_from_document",
    "is_metadata_document_url",
    "resolve",
]

MAX_METADATA_DOCUMENT = 64 * 1024
"""Largest document read (the draft suggests 5 KB is plenty; 64 KiB leaves room)."""

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`(host, port) -> addresses`: how a document's host name becomes IP addresses."""


class UnusableDocument(McpMiddlewareError):
    """A client ID metadata document that cannot be used; the message says why (shown to the client)."""


async def resolve(host: str, port: int) -> Sequence[str]:
    """The system resolver (in a worker thread, as anyio does it)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_metadata_document_url(client_id: str) -> bool:
    """An https URL with a path and no fragment or credentials (draft-ietf-oauth-client-id-metadata-document)."""
    parts = urlsplit(client_id)
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and parts.path not in ("", "/")
        and not parts.fragment
        and parts.username is None
    )


class MetadataDocumentFetcher:
    """Fetch one document as the module docstring says; raises :class:`UnusableDocument` with the reason.

    `http_client` (optional) is used for its TLS settings (e.g. a test CA); without it each fetch
    has its own client that ignores proxy environment variables (the connection must go to the
    checked address). `resolver` defaults to the system resolver.
    """

    def __init__(
        self,
        *,
        allow_private_hosts: bool = False,
        http_client: httpx2.AsyncClient | None = None,
        resolver: Resolver | None = None,
        max_bytes: int = MAX_METADATA_DOCUMENT,
        timeout: float = 5.0,
    ) -> None:
        self.allow_private_hosts = allow_private_hosts
        self.http_client = http_client
        self.resolver: Resolver = resolver if resolver is not None else resolve
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def fetch(self, url: str) -> dict[str, Any]:
        target = httpx2.URL(url)
        host = target.raw_host.decode("ascii")  # IDNA-encoded: what DNS and TLS see
        addresses = await self._checked_addresses(host, target.port or 443)
        headers = {"Host": target.netloc.decode("ascii"), "Accept": "application/json"}
        headers |= {"Accept-Encoding": "identity", "Connection": "close"}
        if self.http_client is not None:
            return await self._fetch_from(self.http_client, target, host, addresses, headers)
        async with httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
            return await self._fetch_from(client, target, host, addresses, headers)

    async def _checked_addresses(self, host: str, port: int) -> list[str]:
        try:
            with anyio.fail_after(self.timeout):
                found = list(await self.resolver(host, port))
        except (OSError, TimeoutError) as exc:
            raise UnusableDocument("host does not resolve") from exc
        addresses: list[str] = []
        for text in found:
            try:
                address = ipaddress.ip_address(text.partition("%")[0])
            except ValueError as exc:
                raise UnusableDocument("host does not resolve to an IP address") from exc
            if not self.allow_private_hosts and not address.is_global:
                raise UnusableDocument("host is not public")  # any private answer: the name is not trusted
            addresses.append(address.compressed)
        if not addresses:
            raise UnusableDocument("host does not resolve")
        return addresses

    async def _fetch_from(
        self,
        client: httpx2.AsyncClient,
        target: httpx2.URL,
        host: str,
        addresses: list[str],
        headers: dict[str, str],
    ) -> dict[str, Any]:
        for index, address in enumerate(addresses):
            try:
                return await self._fetch_at(client, target.copy_with(host=address), host, headers)
            except httpx2.ConnectError as exc:
                if index == len(addresses) - 1:
                    raise UnusableDocument("could not be fetched") from exc
            except httpx2.HTTPError as exc:
                raise UnusableDocument("could not be fetched") from exc
        raise UnusableDocument("could not be fetched")  # pragma: no cover (addresses is never empty)

    async def _fetch_at(
        self, client: httpx2.AsyncClient, url: httpx2.URL, server_name: str, headers: dict[str, str]
    ) -> dict[str, Any]:
        extensions = {"sni_hostname": server_name}  # TLS name and certificate check: the host, not the IP
        async with client.stream(
            "GET", url, headers=headers, extensions=extensions, timeout=self.timeout, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise UnusableDocument(f"fetch answered HTTP {response.status_code}")
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise UnusableDocument("must not be compressed")
            declared = response.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
                raise UnusableDocument("too large")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise UnusableDocument("too large")  # leaving the block closes the connection
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UnusableDocument("not JSON") from exc
        if not isinstance(document, dict):
            raise UnusableDocument("not a JSON object")
        return document


def client_from_document(client_id: str, document: dict[str, Any]) -> RegisteredClient:
    """The public client a document describes; :class:`UnusableDocument` if it does not describe one."""
    if document.get("client_id") != client_id:
        raise UnusableDocument("client_id does not match the document's URL")
    redirect_uris = document.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris or not all(isinstance(u, str) for u in redirect_uris):
        raise UnusableDocument("redirect_uris must be a non-empty list of URLs")
    if not isinstance(document.get("client_name"), str):
        raise UnusableDocument("client_name is required")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise UnusableDocument("only public clients (token_endpoint_auth_method 'none') are supported")
    grant_types = document.get("grant_types") or ["authorization_code"]
    if not isinstance(grant_types, list) or not all(isinstance(g, str) for g in grant_types):
        raise UnusableDocument("grant_types must be a list")
    return RegisteredClient(
        client_id=client_id,
        redirect_uris=list(redirect_uris),
        token_endpoint_auth_method="none",
        grant_types=list(grant_types),
        response_types=["code"],
        client_name=document["client_name"],
        metadata={**document, "fetched_at": time.time()},
    )

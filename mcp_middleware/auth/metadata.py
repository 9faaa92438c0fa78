"""RFC 9728 protected-resource metadata: where clients learn which authorization server to ask."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson
from starlette.types import Receive, Scope, Send

from mcp_middleware.core.protocol import PROTECTED_RESOURCE_PREFIX

__all__ = ["ProtectedResourceMetadataApp", "metadata_path", "metadata_url"]


def metadata_path(resource: str) -> str:
    """The path-inserted well-known path (RFC 9728 §3.1) at the host root.

    >>> metadata_path("https://gw.example.com/api/mcp")
    '/.well-known/oauth-protected-resource/api/mcp'
    """
    path = urlsplit(resource).path.rstrip("/")
    return PROTECTED_RESOURCE_PREFIX + path


def metadata_url(resource: str) -> str:
    """The absolute metadata URL, as sent in `WWW-Authenticate: Bearer resource_metadata="…"`."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{metadata_path(resource)}"


_CORS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, OPTIONS"),
    (b"access-control-allow-headers", b"authorization, content-type, mcp-protocol-version"),
    (b"access-control-max-age", b"86400"),
]


class ProtectedResourceMetadataApp:
    """An ASGI app answering GET (and the CORS preflight) with the resource's metadata document.

    `AuthMiddleware` serves it by itself at the right path when it sees requests at the
    host root; mount this app at :func:`metadata_path` when the middleware only wraps a
    sub-application (the document must live at the host root, not under the mount).

    >>> app = ProtectedResourceMetadataApp(
    ...     resource="https://mcp.example.com/mcp",
    ...     authorization_servers=["https://login.example.com"],
    ...     scopes_supported=["mcp:read"],
    ... )
    """

    def __init__(
        self,
        *,
        resource: str,
        authorization_servers: Sequence[str],
        scopes_supported: Sequence[str] | None = None,
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        cache_seconds: int = 3600,
    ) -> None:
        if not authorization_servers:
            raise ValueError("protected resource metadata must name at least one authorization server")
        document: dict[str, object] = {
            "resource": resource,
            "authorization_servers": list(authorization_servers),
            "bearer_methods_supported": ["header"],
        }
        if scopes_supported is not None:
            document["scopes_supported"] = list(scopes_supported)
        if resource_name is not None:
            document["resource_name"] = resource_name
        if resource_documentation is not None:
            document["resource_documentation"] = resource_documentation
        self.document = document
        self.path = metadata_path(resource)
        self._body = orjson.dumps(document)
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"cache-control", f"public, max-age={cache_seconds}".encode()),
            *_CORS,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        if method == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": _CORS})
            await send({"type": "http.response.body", "body": b""})
            return
        if method not in ("GET", "HEAD"):
            body = b'{"error":"method_not_allowed"}'
            headers = [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD, OPTIONS"), *_CORS]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else self._body})

"""HTTP attributes of the request span, in the stable HTTP semantic conventions.

The span carries `http.request.method`, `url.scheme`, `url.path` (`url.query` when there is one),
`server.address`/`server.port` (from `Host`), `network.protocol.version`, `client.address`/
`client.port`, `user_agent.original` and, once the answer starts, `http.response.status_code`.
The conventions of before (`http.method`, `http.target`, `http.status_code`, `net.host.name`…)
are written as well only when `OTEL_SEMCONV_STABILITY_OPT_IN` lists `http/dup`, the migration
switch the OpenTelemetry instrumentations share. Every value taken from the request is clipped.

>>> scope = {"method": "POST", "scheme": "http", "path": "/mcp", "http_version": "1.1",
...          "headers": [(b"host", b"mcp.example:8080")], "client": ("10.0.0.7", 50123)}
>>> attributes = HttpConventions(duplicate=False).request(scope)
>>> attributes["http.request.method"], attributes["server.address"], attributes["server.port"]
('POST', 'mcp.example', 8080)
>>> "http.method" in attributes
False
"""

from __future__ import annotations

import os
from typing import Final

from starlette.types import Scope

from mcp_middleware.core import clip

from .semconv import AttributeMap

__all__ = ["HttpConventions", "duplicate_requested"]

_METHODS: Final = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def duplicate_requested(environ: dict[str, str] | None = None) -> bool:
    """Whether `OTEL_SEMCONV_STABILITY_OPT_IN` asks for the old HTTP attributes beside the stable ones."""
    value = (os.environ if environ is None else environ).get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return "http/dup" in (part.strip() for part in value.split(","))


def _authority(scope: Scope) -> tuple[str | None, int | None]:
    """`(host, port)` of the `Host` header, else of the server's socket."""
    host = None
    for key, value in scope["headers"]:
        if key == b"host":
            host = value.decode("latin-1")
            break
    if host is None:
        server = scope.get("server")
        return (server[0], server[1]) if server else (None, None)
    name, port = host, None
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = host.partition(":")
    if port_text.isdigit() and len(port_text) <= 5:
        port = int(port_text)
    else:
        port = _DEFAULT_PORTS.get(scope.get("scheme", "http"))
    return clip(name, 255), port


class HttpConventions:
    """Builds the HTTP attributes of a server span (stable, plus the old ones with `duplicate`)."""

    __slots__ = ("duplicate",)

    def __init__(self, *, duplicate: bool | None = None) -> None:
        self.duplicate = duplicate_requested() if duplicate is None else duplicate

    def request(self, scope: Scope) -> AttributeMap:
        """The attributes known when the request arrives."""
        method: str = scope["method"]
        scheme: str = scope.get("scheme", "http")
        path = clip(scope["path"])
        attributes: AttributeMap = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "url.scheme": scheme,
            "url.path": path,
        }
        if method not in _METHODS:
            attributes["http.request.method_original"] = clip(method, 64)
        query: bytes = scope.get("query_string", b"")
        if query:
            attributes["url.query"] = clip(query.decode("latin-1"))
        address, port = _authority(scope)
        if address:
            attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
        version = scope.get("http_version")
        if version:
            attributes["network.protocol.version"] = version
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
            attributes["client.port"] = client[1]
        agent = None
        for key, value in scope["headers"]:
            if key == b"user-agent":
                agent = clip(value.decode("latin-1"))
                attributes["user_agent.original"] = agent
                break
        if self.duplicate:
            attributes["http.method"] = method if method in _METHODS else "_OTHER"
            attributes["http.scheme"] = scheme
            attributes["http.target"] = path + ("?" + clip(query.decode("latin-1")) if query else "")
            if address:
                attributes["net.host.name"] = address
            if port is not None:
                attributes["net.host.port"] = port
            if version:
                attributes["http.flavor"] = version
            if client:
                attributes["net.peer.ip"] = client[0]
                attributes["net.peer.port"] = client[1]
            if agent is not None:
                attributes["http.user_agent"] = agent
        return attributes

    def response(self, status: int) -> AttributeMap:
        """The attributes of the answer's status."""
        if self.duplicate:
            return {"http.response.status_code": status, "http.status_code": status}
        return {"http.response.status_code": status}

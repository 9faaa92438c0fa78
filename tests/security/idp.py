"""What the security tests stand on: a real JWKS served on loopback, tokens signed for it, a protected backend.

The identity provider is the part a test cannot reach on the internet; here it is a JWKS
document served by uvicorn on 127.0.0.1 and an RSA key that signs access tokens, which is all
a resource server ever sees of one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import RSAKey
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_middleware.auth import JwksTokenVerifier
from tests.auth.conftest import Issuer
from tests.conftest import serve_app

ISSUER = "https://idp.security.test"
RESOURCE = "https://mcp.security.test/mcp"
"""The audience: configuration, not the URL a request came in on (the port is not known in advance)."""


@dataclass
class JwksHost:
    """The issuer's JWKS endpoint; counts how often it is asked."""

    keys: list[dict[str, Any]]
    hits: list[str] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.hits.append(request.url.path)
        return JSONResponse({"keys": self.keys})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/jwks", self.endpoint)])


@dataclass
class Idp:
    """A signing key whose public half is served at `jwks_uri`; `token(...)` signs access tokens."""

    issuer: Issuer
    jwks_uri: str
    host: JwksHost

    def token(self, subject: str = "alice", scope: str = "mcp:read", **changes: Any) -> str:
        return self.issuer.token(sub=subject, scope=scope, client_id=f"{subject}-cli", **changes)

    def verifier(self, **options: Any) -> JwksTokenVerifier:
        options.setdefault("min_refetch_interval", 0.0)
        return JwksTokenVerifier(jwks_uri=self.jwks_uri, issuer=ISSUER, audience=RESOURCE, **options)


@contextlib.contextmanager
def serve_idp() -> Iterator[Idp]:
    key = RSAKey.generate_key(2048, parameters={"kid": "sec-1", "use": "sig"})
    host = JwksHost(keys=[key.as_dict(private=False)])
    with serve_app(host.app()) as served:
        yield Idp(Issuer(key, ISSUER, RESOURCE), f"{served.base}/jwks", host)


RUNS: list[str] = []
"""Every tool run, by every `protected_backend` of the process (the tests look for runs that must not happen)."""


def protected_backend(list_scope: str = "private") -> MCPServer:
    """A server whose `tools/list` says it may be cached (for one caller: `cacheScope: private`).

    `admin_reset` needs the `admin` scope: with `filter_lists` only admins see it listed, which
    makes an admin's `tools/list` private data.
    """
    hints: dict[Any, CacheHint] = {"tools/list": CacheHint(ttl_ms=60_000, scope=list_scope)}  # type: ignore[arg-type]
    server = MCPServer("security-backend", cache_hints=hints)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        RUNS.append("echo")
        return text

    @server.tool()
    def admin_reset() -> str:
        """Only for admins."""
        RUNS.append("admin_reset")
        return "reset"

    return server

"""A FastAPI app whose mounted MCP server accepts access tokens of an external identity provider.

    ISSUER=https://keycloak.example.com/realms/mcp \
    JWKS_URI=https://keycloak.example.com/realms/mcp/protocol/openid-connect/certs \
    python examples/auth_fastapi.py         # serves on 127.0.0.1:$PORT (default 8000)

REST routes stay public; only `/tools/mcp` needs a bearer token, issued by `ISSUER` for
the audience `PUBLIC_URL/tools/mcp`. The protected-resource metadata is served at the
host root (`/.well-known/oauth-protected-resource/tools/mcp`), as RFC 9728 asks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer

from mcp_middleware.auth import AuthMiddleware, JwksTokenVerifier
from mcp_middleware.core import CoreConfig


def build_app(public_url: str, issuer: str, jwks_uri: str) -> FastAPI:
    server = MCPServer("fastapi-auth-demo")

    @server.tool()
    def whoami() -> str:
        """Who the access token says you are."""
        token = get_access_token()
        return token.subject or token.client_id if token else "anonymous"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():  # a mounted app's own lifespan never runs
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    resource = f"{public_url}/tools/mcp"
    app.mount("/tools", server.streamable_http_app())
    app.add_middleware(
        AuthMiddleware,
        verifier=JwksTokenVerifier(jwks_uri=jwks_uri, issuer=issuer, audience=resource),
        resource=resource,
        authorization_servers=[issuer],
        required_scopes=["mcp:read"],
        config=CoreConfig(paths=("/tools/mcp",)),
    )
    return app


PORT = int(os.environ.get("PORT", "8000"))
ISSUER = os.environ.get("ISSUER", f"http://127.0.0.1:{PORT}/idp")
app = build_app(
    os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{PORT}"), ISSUER, os.environ.get("JWKS_URI", f"{ISSUER}/jwks")
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT)

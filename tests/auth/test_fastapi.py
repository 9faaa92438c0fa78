"""A FastAPI app with REST routes, an MCP server mounted under a prefix and the embedded authorization server:
`app.add_middleware(AuthMiddleware, …)` protects only the MCP endpoint, and a real OAuth client logs in."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer

from mcp_middleware.auth import AuthMiddleware
from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from mcp_middleware.core import CoreConfig
from tests.auth.conftest import ProgrammaticLogin, oauth_provider, serve_late
from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio


def build_app(base: str, server: MCPServer, mcp_app: Any) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    issuer = f"{base}/auth"  # an issuer with a path: metadata at /.well-known/oauth-authorization-server/auth
    auth_server = EmbeddedAuthorizationServer(issuer=issuer, scopes_supported=["mcp:read"], auto_approve=True)
    resource = f"{base}/tools/mcp"
    app.mount("/tools", mcp_app)
    app.mount("/", auth_server)
    app.add_middleware(
        AuthMiddleware,
        verifier=auth_server.verifier(audience=resource),
        resource=resource,
        authorization_servers=[issuer],
        required_scopes=["mcp:read"],
        config=CoreConfig(paths=("/tools/mcp",)),
    )
    return app


@pytest.mark.parametrize("era", ERAS)
async def test_fastapi_mounted_mcp_server_with_oauth(era: Era, serve: Any, login: ProgrammaticLogin) -> None:
    server = MCPServer("fastapi-protected")

    @server.tool()
    def whoami() -> str:
        token = get_access_token()
        return token.subject if token and token.subject else "nobody"

    mcp_app = server.streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = build_app(served.base, server, mcp_app)
    url = f"{served.base}/tools/mcp"
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{served.base}/health")).json() == {"status": "ok"}
        metadata = (await http.get(f"{served.base}/.well-known/oauth-protected-resource/tools/mcp")).json()
        assert metadata["resource"] == url
    async with (
        httpx2.AsyncClient(auth=oauth_provider(url, login), timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        result = await client.call_tool("whoami", {})
    assert result.content[0].text == "dev-user"  # type: ignore[union-attr]
    assert login.authorizations[0].startswith(f"{served.base}/auth/authorize?")

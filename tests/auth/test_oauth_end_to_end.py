"""A real `mcp` client logs in with OAuth (discovery, registration, PKCE, token) and calls tools, in both eras."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.auth import AuthMiddleware
from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from tests.auth.conftest import MemoryTokenStorage, ProgrammaticLogin, oauth_provider, serve_late
from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio


def protected_server() -> MCPServer:
    server = MCPServer("protected")

    @server.tool()
    def whoami() -> str:
        """Who the SDK says is calling, and with which scopes."""
        token = get_access_token()
        assert token is not None
        return f"{token.subject} via {token.client_id}: {' '.join(sorted(token.scopes))}"

    @server.tool()
    def delete_everything() -> str:
        """Needs the admin scope."""
        return "deleted"

    return server


class ByPath:
    """`/mcp` to the MCP app, everything else to the authorization server (one origin, as in the gateway)."""

    def __init__(self, mcp_app: ASGIApp, auth_server: ASGIApp) -> None:
        self.mcp_app = mcp_app
        self.auth_server = auth_server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.mcp_app if scope["type"] != "http" or scope["path"].startswith("/mcp") else self.auth_server
        await target(scope, receive, send)


def start(serve: Any) -> tuple[str, EmbeddedAuthorizationServer]:
    mcp_app = protected_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    auth_server = EmbeddedAuthorizationServer(
        issuer=served.base, scopes_supported=["mcp:read", "admin"], default_scopes=["mcp:read"], auto_approve=True
    )
    slot.app = AuthMiddleware(
        ByPath(mcp_app, auth_server),
        verifier=auth_server.verifier(audience=served.mcp_url),
        resource=served.mcp_url,
        authorization_servers=[served.base],
        required_scopes=["mcp:read"],
        scopes={"tools/call:delete_*": ["admin"]},
    )
    return served.mcp_url, auth_server


@asynccontextmanager
async def oauth_client(url: str, era: Era, login: ProgrammaticLogin, storage: MemoryTokenStorage | None = None):  # type: ignore[no-untyped-def]
    async with (
        httpx2.AsyncClient(auth=oauth_provider(url, login, storage), timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


@pytest.mark.parametrize("era", ERAS)
async def test_login_then_call_a_tool(era: Era, serve: Any, login: ProgrammaticLogin) -> None:
    url, _ = start(serve)
    async with oauth_client(url, era, login) as client:
        result = await client.call_tool("whoami", {})
    assert result.content[0].text.startswith("dev-user via ")  # type: ignore[union-attr]
    assert result.content[0].text.endswith(": mcp:read")  # type: ignore[union-attr]
    assert len(login.authorizations) == 1
    assert "code_challenge_method=S256" in login.authorizations[0]
    assert "resource=" in login.authorizations[0]


@pytest.mark.parametrize("era", ERAS)
async def test_step_up_on_insufficient_scope(era: Era, serve: Any, login: ProgrammaticLogin) -> None:
    url, _ = start(serve)
    async with oauth_client(url, era, login) as client:
        await client.call_tool("whoami", {})
        result = await client.call_tool("delete_everything", {})
        assert result.content[0].text == "deleted"  # type: ignore[union-attr]
        after = await client.call_tool("whoami", {})
    assert len(login.authorizations) == 2, "the 403 made the client authorize again"
    assert "admin" in login.authorizations[1]
    assert after.content[0].text.endswith(": admin mcp:read")  # type: ignore[union-attr]

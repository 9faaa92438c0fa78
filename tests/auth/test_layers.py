"""What docs/layers.md says about combining this package with the SDK's own auth, fastmcp's, and `app.mount`.

- `AuthMiddleware` outside an `MCPServer` that has its own `token_verifier`/`AuthSettings`: both verify,
  the inner one has the last word (its refusal is not JSON-RPC; its `AccessToken` is what tools see).
- `AuthMiddleware` outside a fastmcp server: fastmcp's `get_access_token()` and its own per-component
  `AuthMiddleware(auth=require_scopes(...))` see the principal our middleware verified.
- `app.mount("/mcp", server.streamable_http_app(streamable_http_path="/"))`: the endpoint is `/mcp/`,
  `/mcp` answers 307.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from tests.auth.conftest import post_mcp, serve_late
from tests.conftest import ERAS, Era, connect, free_port, require, serve_app

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example"


def token(client_id: str, *scopes: str) -> AccessToken:
    return AccessToken(token="", client_id=client_id, scopes=list(scopes) or ["mcp"], subject="alice")


@contextlib.asynccontextmanager
async def bearer(url: str, era: Era, value: str) -> AsyncIterator[Any]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {value}"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


@contextlib.contextmanager
def both_auths() -> Iterator[str]:
    """Ours outside, the SDK's inside; each verifier knows "both" under another client id, and one token more."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    inner_verifier = StaticTokenVerifier({"both": token("sdk"), "sdk-only": token("sdk")}, resource=url)
    server = MCPServer(
        "both",
        token_verifier=inner_verifier,
        auth=AuthSettings(
            issuer_url=ISSUER,  # type: ignore[arg-type]
            resource_server_url=url,  # type: ignore[arg-type]
            validate_token_resource=False,  # the verifier checks the audience
        ),
    )

    @server.tool()
    def whoami() -> str:
        access = get_access_token()
        return access.client_id if access else "nobody"

    outer_verifier = StaticTokenVerifier({"both": token("ours"), "ours-only": token("ours")}, resource=url)
    app = AuthMiddleware(
        server.streamable_http_app(), verifier=outer_verifier, resource=url, authorization_servers=[ISSUER]
    )
    with serve_app(app, port):
        yield url


@pytest.mark.parametrize("era", ERAS)
async def test_with_both_auths_a_token_must_pass_both_and_the_sdk_has_the_last_word(era: Era) -> None:
    with both_auths() as url:
        await both_verify(url, era)


async def both_verify(url: str, era: Era) -> None:
    async with bearer(url, era, "both") as client:
        whoami = await client.call_tool("whoami", {})
        assert whoami.content[0].text == "sdk"  # type: ignore[union-attr]  # the inner verifier's AccessToken

    ours_refuses = await post_mcp(url, authorization="Bearer sdk-only")
    assert ours_refuses.status_code == 401 and ours_refuses.json()["id"] == 7  # ours: a JSON-RPC error

    sdk_refuses = await post_mcp(url, authorization="Bearer ours-only")
    assert sdk_refuses.status_code == 401
    assert "jsonrpc" not in sdk_refuses.json()  # the SDK's: an OAuth error body, no JSON-RPC id
    assert sdk_refuses.json()["error"] == "invalid_token"


@pytest.mark.parametrize("era", ERAS)
async def test_fastmcp_sees_the_principal_our_middleware_verified(serve: Any, era: Era) -> None:
    require("fastmcp", "the fastmcp extra")
    from fastmcp import FastMCP
    from fastmcp.server.auth import require_scopes
    from fastmcp.server.dependencies import get_access_token as fastmcp_access_token
    from fastmcp.server.middleware import AuthMiddleware as FastMCPAuthMiddleware

    fast = FastMCP("fast", middleware=[FastMCPAuthMiddleware(auth=require_scopes("notes:write"))])

    @fast.tool
    def whoami() -> str:
        access = fastmcp_access_token()
        return access.client_id if access else "nobody"

    mcp_app = fast.http_app(path="/mcp")
    served, slot = serve_late(serve, mcp_app)
    verifier = StaticTokenVerifier(
        {"writer": token("writer-app", "mcp", "notes:write"), "reader": token("reader-app", "mcp")},
        resource=served.mcp_url,
    )
    slot.app = AuthMiddleware(mcp_app, verifier=verifier, resource=served.mcp_url)

    async with bearer(served.mcp_url, era, "writer") as client:
        assert (await client.call_tool("whoami", {})).content[0].text == "writer-app"  # type: ignore[union-attr]
    async with bearer(served.mcp_url, era, "reader") as client:  # fastmcp's own check, on our principal
        assert [tool.name for tool in (await client.list_tools()).tools] == []


@pytest.mark.parametrize("era", ERAS)
async def test_mounted_at_mcp_the_endpoint_is_mcp_slash(serve: Any, era: Era) -> None:
    from fastapi import FastAPI

    server = MCPServer("mounted")

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/mcp", server.streamable_http_app(streamable_http_path="/"))
    served = serve(app)
    async with connect(f"{served.base}/mcp/", era) as client:
        assert (await client.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"  # type: ignore[union-attr]
    redirected = await post_mcp(f"{served.base}/mcp", method="tools/list", params={})
    assert redirected.status_code == 307 and redirected.headers["location"] == f"{served.base}/mcp/"

"""The auth examples (which docs/auth.md points to) work as their docstrings say, in both eras."""

from __future__ import annotations

import importlib
from typing import Any

import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette

from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from tests.auth.conftest import ProgrammaticLogin, challenge_params, oauth_provider, post_mcp, serve_late
from tests.conftest import ERAS, Era, connect, require

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_dev_server_example_logs_in_and_steps_up(era: Era, serve: Any, login: ProgrammaticLogin) -> None:
    example = importlib.import_module("examples.auth_dev_server")
    mcp_app = example.build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = example.build_app(served.base, mcp_app)
    async with (
        httpx2.AsyncClient(auth=oauth_provider(served.mcp_url, login), timeout=30) as http,
        connect(streamable_http_client(served.mcp_url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        assert [t.name for t in (await client.list_tools()).tools] == ["whoami"], "filtered to what it may call"
        assert (await client.call_tool("whoami", {})).content[0].text == "dev-user (notes:read)"  # type: ignore[union-attr]
        assert (await client.call_tool("delete_note", {"title": "x"})).content[0].text == "deleted x"  # type: ignore[union-attr]
    assert len(login.authorizations) == 2


@pytest.mark.parametrize("era", ERAS)
async def test_fastapi_example_accepts_tokens_of_its_identity_provider(era: Era, serve: Any) -> None:
    idp_served, idp_slot = serve_late(serve, Starlette())
    idp = EmbeddedAuthorizationServer(issuer=f"{idp_served.base}/idp")
    idp_slot.app = idp
    example = importlib.import_module("examples.auth_fastapi")
    # The audience is configuration, not the URL a request came in on: a public name works before the port is known.
    public_url = "https://mcp.example.com"
    app_served = serve(example.build_app(public_url, idp.issuer, f"{idp.issuer}/jwks"))
    url = f"{app_served.base}/tools/mcp"
    token, _ = idp.issue_access_token(
        subject="ada", client_id="cli", scope="mcp:read", resource=f"{public_url}/tools/mcp"
    )
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{app_served.base}/health")).json() == {"status": "ok"}
        refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        assert (await client.call_tool("whoami", {})).content[0].text == "ada"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_fastmcp_example(era: Era, serve: Any) -> None:
    require("fastmcp", "the fastmcp extra is tested in CI")
    example = importlib.import_module("examples.auth_fastmcp")
    served = serve(example.build_app("https://mcp.example.com"))
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer dev-token"}, timeout=30) as http,
        connect(streamable_http_client(served.mcp_url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        assert (await client.call_tool("whoami", {})).content[0].text == "dev"  # type: ignore[union-attr]
    refused = await post_mcp(served.mcp_url, authorization="Bearer wrong")
    assert refused.status_code == 401
    assert challenge_params(refused)["error"] == "invalid_token"

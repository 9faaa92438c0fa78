"""The shipped example end to end: examples/gateway/gateway.toml (dev authorization server, login page,
every middleware) and the `mcp` SDK's OAuth client doing discovery, registration, PKCE login and calls,
in both eras — the same flow as `examples/gateway/try_it.py`, which is run as a user would run it."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gateway" / "gateway.toml"
try_it = importlib.import_module("examples.gateway.try_it")


@pytest.fixture(scope="module")
def gateway() -> Iterator[Served]:
    port = free_port()
    built = build_gateway(load_config(EXAMPLE), port=port)
    with serve_app(built.app, port=port) as served:
        yield served


@contextlib.asynccontextmanager
async def logged_in(url: str, era: Era, user: str = "alice") -> AsyncIterator[Client]:
    login = try_it.Login(user)
    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="gateway test",
            redirect_uris=[try_it.REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=try_it.MemoryStorage(),
        redirect_handler=login.redirect,
        callback_handler=login.callback,
    )
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(
            streamable_http_client(url, http_client=http), mode="legacy" if era == "legacy" else "auto", cache=None
        ) as client,
    ):
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_oauth_login_then_the_aggregate(gateway: Served, era: Era) -> None:
    async with logged_in(f"{gateway.base}/mcp", era) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"demo__echo", "demo__add", "text__reverse"} <= names
        result = await client.call_tool("demo__add", {"a": 2, "b": 40})
        assert result.content[0].text == "42"  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_oauth_login_then_a_path_mount(gateway: Served, era: Era) -> None:
    async with logged_in(f"{gateway.base}/mcp/text", era) as client:
        result = await client.call_tool("reverse", {"text": "gateway"})
        assert result.content[0].text == "yawetag"  # type: ignore[union-attr]


def test_a_token_for_one_mount_is_refused_by_another(gateway: Served) -> None:
    """RFC 8707: each mount is its own resource; a token bound to /mcp/text is not one for /mcp/demo."""
    import anyio

    server = gateway
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}

    async def run() -> None:
        storage = try_it.MemoryStorage()
        login = try_it.Login("bob")
        auth = OAuthClientProvider(
            server_url=f"{server.base}/mcp/text",
            client_metadata=OAuthClientMetadata(
                client_name="audience test",
                redirect_uris=[try_it.REDIRECT_URI],  # type: ignore[list-item]
                grant_types=["authorization_code"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=storage,
            redirect_handler=login.redirect,
            callback_handler=login.callback,
        )
        async with (
            httpx2.AsyncClient(auth=auth, timeout=30) as http,
            Client(streamable_http_client(f"{server.base}/mcp/text", http_client=http), cache=None) as client,
        ):
            await client.list_tools()
        assert storage.tokens is not None
        token = storage.tokens.access_token
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        async with httpx2.AsyncClient(timeout=30) as http:
            legacy = {**headers, "authorization": f"Bearer {token}"}
            other = await http.post(f"{server.base}/mcp/demo", json=ping, headers=legacy)
        assert other.status_code == 401
        assert 'error="invalid_token"' in other.headers["www-authenticate"]
        assert other.json()["id"] == 3

    anyio.run(run)


def test_try_it_runs_as_a_user_would_run_it(gateway: Served) -> None:
    done = processes.run(
        [sys.executable, str(ROOT / "examples" / "gateway" / "try_it.py"), f"{gateway.base}/mcp"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "logged in as dev-user" in done.stdout
    assert "demo__echo -> hello through the gateway" in done.stdout and "demo__add -> 42" in done.stdout


AUTHORIZATION_SERVER_PATHS = (
    "/.well-known/oauth-authorization-server",
    "/jwks",
    "/authorize",
    "/token",
    "/introspect",
    "/register",
)


@pytest.mark.anyio
async def test_the_gateway_serves_the_routes_its_authorization_server_names(gateway: Served) -> None:
    """The gateway routes beside the router what the embedded server says it answers, no copied list:
    each path reaches the authorization server (its answer or its 405, never the router's 404)."""
    built = build_gateway(load_config(EXAMPLE))
    assert built.authorization_server is not None
    assert built.authorization_server.paths == AUTHORIZATION_SERVER_PATHS
    async with httpx2.AsyncClient(timeout=10) as http:
        for path in AUTHORIZATION_SERVER_PATHS:
            response = await http.get(f"{gateway.base}{path}")
            assert response.status_code != 404, path
        metadata = (await http.get(f"{gateway.base}/.well-known/oauth-authorization-server")).json()
        assert metadata["issuer"] == gateway.base
        assert (await http.get(f"{gateway.base}/jwks")).json()["keys"]
        assert (await http.get(f"{gateway.base}/jwks/other")).status_code == 404  # only the exact paths

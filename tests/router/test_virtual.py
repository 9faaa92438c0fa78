"""Virtual servers: chosen tools of several backends behind one endpoint, its own door, the backends' stacks.

"support" selects `crm:search*` (crm is curated: `search_docs` renamed `search`, `*_admin` denied),
`tickets:create`, a prompt and a resource prefix of tickets; "billing" is mounted and not selected.
Tests run real servers with the SDK client in both eras and ask what a client sees and can reach.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from starlette.middleware import Middleware

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import CoreConfig, ErrorCode, JsonRpcCode
from mcp_middleware.router import McpRouter
from tests.conftest import ERAS, Era, connect

from .curated_servers import crm_curation, crm_server
from .servers import team_server

pytestmark = pytest.mark.anyio

EVERY_PATH = CoreConfig(paths=("*",))
TOKENS = {"agent": ["mcp"], "searcher": ["mcp", "crm:search"]}
SUPPORT_TOOLS = ["crm__search", "crm__search_people", "tickets__create"]


def build(*, door: bool = False, path: str | None = None) -> McpRouter:
    verifier = StaticTokenVerifier(TOKENS)
    router = McpRouter()
    crm_stack = (
        [  # the backend's own authorization, in its own names: the virtual server's calls pass it too
            Middleware(
                AuthMiddleware,
                verifier=verifier,
                resource="http://127.0.0.1/mcp/crm",
                required_scopes=["mcp"],
                scopes={"tools/call:search_docs": ["crm:search"]},
                require_audience=False,
                config=EVERY_PATH,
            )
        ]
        if door
        else []
    )
    router.mount("crm", crm_server().streamable_http_app(), curation=crm_curation(), middleware=crm_stack)
    router.mount("tickets", team_server("tickets", ("create", "close", "delete")).streamable_http_app())
    router.mount("billing", team_server("billing", ("refund",)).streamable_http_app())
    support_door = [
        Middleware(
            AuthMiddleware,
            verifier=verifier,
            resource=f"http://127.0.0.1{path or '/mcp/support'}",
            authorization_servers=["https://login.example.com"],
            required_scopes=["mcp"],
            require_audience=False,
            config=EVERY_PATH,
        )
    ]
    router.virtual_server(
        "support",
        tools=["crm:search*", "tickets:create"],
        prompts=["tickets:summarize"],
        resources=["tickets:tickets://readme"],
        path=path,
        middleware=support_door if door else (),
    )
    return router


@contextlib.asynccontextmanager
async def client_for(target: str, era: Era, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        connect(streamable_http_client(target, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


@pytest.mark.parametrize("era", ERAS)
async def test_a_virtual_server_lists_and_calls_its_selection(era: Era, serve: Any) -> None:
    base = serve(build()).base
    async with connect(f"{base}/mcp/support", era) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
        resources = [resource.uri for resource in (await client.list_resources()).resources]
        searched = await client.call_tool("crm__search", {"query": "q"})
        created = await client.call_tool("tickets__create", {"query": "t"})
        prompt = await client.get_prompt("tickets__summarize", {"topic": "x"})
        readme = await client.read_resource("tickets+tickets://readme")
    assert sorted(tools) == SUPPORT_TOOLS
    assert tools["crm__search"].description == "Search the docs"  # the backend's curation holds here too
    assert tools["crm__search"].annotations is not None and tools["crm__search"].annotations.destructive_hint
    assert prompts == ["tickets__summarize"]
    assert resources == ["tickets+tickets://readme"]
    assert searched.content[0].text == "crm:search_docs:q"  # type: ignore[union-attr]
    assert created.content[0].text == "tickets:create:t"  # type: ignore[union-attr]
    assert prompt.messages[0].content.text == "[tickets] summarize x"  # type: ignore[union-attr]
    assert readme.contents[0].text == "readme of tickets"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_a_virtual_server_reaches_nothing_it_did_not_select(era: Era, serve: Any) -> None:
    base = serve(build()).base
    async with connect(f"{base}/mcp/support", era) as client:
        await client.list_tools()
        for name in ("tickets__delete", "tickets__close", "billing__refund", "crm__drop_table", "crm__create"):
            with pytest.raises(MCPError) as unknown:
                await client.call_tool(name, {})
            assert unknown.value.code == JsonRpcCode.INVALID_PARAMS, name
        for name in ("crm__search_admin", "crm__search_docs"):  # selected by the glob, hidden by crm's curation
            with pytest.raises(MCPError) as hidden:
                await client.call_tool(name, {})
            assert hidden.value.code == JsonRpcCode.INVALID_PARAMS, name
        for uri in ("tickets+tickets://items/1", "billing+billing://readme", "crm+crm://public/readme"):
            with pytest.raises(MCPError) as unselected:
                await client.read_resource(uri)
            assert unselected.value.code == JsonRpcCode.INVALID_PARAMS, uri
        with pytest.raises(MCPError):
            await client.get_prompt("crm__summary", {"topic": "x"})
    async with connect(f"{base}/mcp", era) as client:  # the aggregate still offers everything else
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"tickets__delete", "billing__refund", "crm__search"} <= names


@pytest.mark.parametrize("era", ERAS)
async def test_a_virtual_server_has_its_own_door_and_the_backends_authorize(era: Era, serve: Any) -> None:
    base = serve(build(door=True, path="/support")).base
    async with httpx2.AsyncClient(timeout=30) as http:
        metadata = await http.get(f"{base}/.well-known/oauth-protected-resource/support")
        anonymous = await http.post(f"{base}/support", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert metadata.status_code == 200 and metadata.json()["resource"] == "http://127.0.0.1/support"
    assert "/.well-known/oauth-protected-resource/support" in anonymous.headers["www-authenticate"]
    assert anonymous.status_code == 401
    async with client_for(f"{base}/support", era, "agent") as client:
        assert sorted(tool.name for tool in (await client.list_tools()).tools) == SUPPORT_TOOLS
        assert (await client.call_tool("tickets__create", {})).content[0].text == "tickets:create:"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:  # crm's own stack wants crm:search for search_docs
            await client.call_tool("crm__search", {"query": "q"})
    assert refused.value.code == ErrorCode.FORBIDDEN
    async with client_for(f"{base}/support", era, "searcher") as client:
        result = await client.call_tool("crm__search", {"query": "q"})
    assert result.content[0].text == "crm:search_docs:q"  # type: ignore[union-attr]


def test_a_virtual_server_must_select_mounted_servers() -> None:
    router = McpRouter()
    router.mount("crm", crm_server().streamable_http_app())
    with pytest.raises(ValueError, match="not mounted"):
        router.virtual_server("support", tools=["crm:*", "ghost:*"])
    with pytest.raises(ValueError, match="server:glob"):
        router.virtual_server("support", tools=["search_*"])
    with pytest.raises(ValueError, match="already served"):
        router.virtual_server("crm", tools=["crm:*"])
    with pytest.raises(ValueError, match="selects nothing"):
        router.virtual_server("empty")

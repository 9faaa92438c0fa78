"""Curation holds at both doors: the path mount (`/mcp/crm`) and the aggregate (`/mcp`), in both eras.

One real `MCPServer` ("crm") is mounted with a curation: allow `search_*`/`create`, deny `*_admin`,
`search_docs` renamed `search` with a description and `destructiveHint` override, prompts renamed and
denied, resources restricted to `crm://public/`. Every test asks what a client sees: the lists, the
results of calls under public names, and the JSON-RPC error (code, message, data) of refused ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode, JsonRpcCode
from mcp_middleware.router import Curation, ItemRules, McpRouter, StdioBackend
from tests.conftest import ERAS, Era, connect

from .curated_servers import HIDDEN_TOOLS, VISIBLE_TOOLS, crm_curation, crm_server, paged_server
from .test_stdio import SCRIPT

pytestmark = pytest.mark.anyio

Endpoint = Literal["mount", "aggregate"]
ENDPOINTS: tuple[Endpoint, ...] = ("mount", "aggregate")


def build(refusal: str = "unknown") -> McpRouter:
    router = McpRouter()
    router.mount("crm", crm_server().streamable_http_app(), curation=crm_curation(refusal))
    router.mount("plain", crm_server("plain", ("search_docs",)).streamable_http_app())
    return router


def url(base: str, endpoint: Endpoint) -> str:
    return f"{base}/mcp/crm" if endpoint == "mount" else f"{base}/mcp"


def public(endpoint: Endpoint, name: str) -> str:
    return name if endpoint == "mount" else f"crm__{name}"


def uri(endpoint: Endpoint, value: str) -> str:
    return value if endpoint == "mount" else f"crm+{value}"


@pytest.fixture
def base(serve: Any) -> str:
    return str(serve(build()).base)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_lists_show_the_curated_surface(era: Era, endpoint: Endpoint, base: str) -> None:
    async with connect(url(base, endpoint), era) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
        resources = [resource.uri for resource in (await client.list_resources()).resources]
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
    mine = sorted(name for name in tools if endpoint == "mount" or name.startswith("crm__"))
    assert mine == sorted(public(endpoint, name) for name in VISIBLE_TOOLS)
    search = tools[public(endpoint, "search")]
    assert search.description == "Search the docs"
    assert search.annotations is not None
    assert search.annotations.destructive_hint is True
    assert search.annotations.read_only_hint is True  # the backend's own annotations stay under the override
    assert search.annotations.title == "search_docs title"
    create = tools[public(endpoint, "create")]
    assert create.annotations is not None and create.annotations.read_only_hint is False
    assert create.description == "create of crm"
    if endpoint == "aggregate":  # another backend's items are untouched by crm's curation
        assert "plain__search_docs" in tools
    assert [p for p in prompts if endpoint == "mount" or p.startswith("crm__")] == [public(endpoint, "summary")]
    assert [r for r in resources if endpoint == "mount" or r.startswith("crm+")] == [
        uri(endpoint, "crm://public/readme")
    ]
    assert [t for t in templates if endpoint == "mount" or t.startswith("crm+")] == [
        uri(endpoint, "crm://public/items/{item}")
    ]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_renamed_names_route_back_to_the_backend(era: Era, endpoint: Endpoint, base: str) -> None:
    async with connect(url(base, endpoint), era) as client:
        result = await client.call_tool(public(endpoint, "search"), {"query": "q"})
        people = await client.call_tool(public(endpoint, "search_people"), {"query": "p"})
        prompt = await client.get_prompt(public(endpoint, "summary"), {"topic": "t"})
        readme = await client.read_resource(uri(endpoint, "crm://public/readme"))
        item = await client.read_resource(uri(endpoint, "crm://public/items/7"))
    assert result.content[0].text == "crm:search_docs:q"  # type: ignore[union-attr]
    assert people.content[0].text == "crm:search_people:p"  # type: ignore[union-attr]
    assert prompt.messages[0].content.text == "[crm] summarize t"  # type: ignore[union-attr]
    assert readme.contents[0].text == "readme of crm"  # type: ignore[union-attr]
    assert item.contents[0].text == "crm item 7"  # type: ignore[union-attr]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_hidden_names_are_refused_as_unknown(era: Era, endpoint: Endpoint, base: str) -> None:
    async with connect(url(base, endpoint), era) as client:
        for name in HIDDEN_TOOLS:  # denied, not allowed, and the backend's own name of a renamed tool
            with pytest.raises(MCPError) as refused:
                await client.call_tool(public(endpoint, name), {"query": "x"})
            assert refused.value.code == JsonRpcCode.INVALID_PARAMS, name
            assert refused.value.message == f"Unknown tool: {public(endpoint, name)}"
        for prompt in ("secret_plan", "summarize"):
            with pytest.raises(MCPError) as refused:
                await client.get_prompt(public(endpoint, prompt), {"topic": "t"} if prompt == "summarize" else None)
            assert refused.value.code == JsonRpcCode.INVALID_PARAMS
        with pytest.raises(MCPError) as refused:
            await client.read_resource(uri(endpoint, "crm://private/keys"))
        assert refused.value.code == JsonRpcCode.INVALID_PARAMS
        with pytest.raises(MCPError) as walked:  # a dot segment cannot walk out of the allowed prefix
            await client.read_resource(uri(endpoint, "crm://public/../private/keys"))
        assert walked.value.code == JsonRpcCode.INVALID_PARAMS
        assert (await client.call_tool(public(endpoint, "create"), {})).content[0].text == "crm:create:"  # type: ignore[union-attr]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_forbidden_refusals_name_the_rule(era: Era, endpoint: Endpoint, serve: Any) -> None:
    base = serve(build("forbidden")).base
    expected = {
        "search_admin": "tools.deny: *_admin",
        "drop_table": "tools.allow: not matched",
        "search_docs": "tools.rename: renamed",
    }
    async with connect(url(base, endpoint), era) as client:
        await client.list_tools()
        for name, rule in expected.items():
            with pytest.raises(MCPError) as refused:
                await client.call_tool(public(endpoint, name), {})
            assert refused.value.code == ErrorCode.FORBIDDEN
            assert refused.value.message == f"Tool not allowed: {public(endpoint, name)}"
            assert refused.value.data == {"rule": rule}
        with pytest.raises(MCPError) as refused:
            await client.read_resource(uri(endpoint, "crm://private/keys"))
        assert refused.value.code == ErrorCode.FORBIDDEN
        assert refused.value.data == {"rule": "resources.allow: not matched"}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_paginated_backend_is_curated_on_every_page(era: Era, endpoint: Endpoint, serve: Any) -> None:
    router = McpRouter(page_size=4)
    curation = Curation(tools=ItemRules(deny=("t00[13579]",), rename={"t004": "four"}))
    router.mount("paged", paged_server("t", 12, page=3).streamable_http_app(), curation=curation)
    base = serve(router).base
    target = f"{base}/mcp/paged" if endpoint == "mount" else f"{base}/mcp"
    walked: list[str] = []
    async with connect(target, era) as client:
        cursor: str | None = None
        for _ in range(20):
            page = await client.list_tools(cursor=cursor)
            walked.extend(tool.name for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        prefix = "" if endpoint == "mount" else "paged__"
        result = await client.call_tool(f"{prefix}four", {})
        with pytest.raises(MCPError):
            await client.call_tool(f"{prefix}t004", {})
    names = {name.removeprefix("paged__") for name in walked}
    assert names == {"t000", "t002", "four", "t006", "t008", "t010", "t011"}
    assert len(walked) == len(names)
    assert result.content[0].text == "ran t004"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_a_stdio_backend_is_curated_at_both_doors(era: Era, serve: Any, tmp_path: Path) -> None:
    """A stdio backend's mount is a one-backend bridge: the curation layer wraps it like any stack."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    backend = StdioBackend(sys.executable, [SCRIPT, str(tmp_path / "generation")], env=env, timeout=30)
    router = McpRouter()
    curation = Curation(tools=ItemRules(deny=("pid",), rename={"generation_1": "generation"}))
    router.mount("local", backend, curation=curation)
    base = serve(router).base
    for target, prefix in ((f"{base}/mcp/local", ""), (f"{base}/mcp", "local__")):
        async with connect(target, era) as client:
            assert [tool.name for tool in (await client.list_tools()).tools] == [f"{prefix}generation"]
            result = await client.call_tool(f"{prefix}generation", {})
            for hidden in ("pid", "generation_1"):
                with pytest.raises(MCPError) as refused:
                    await client.call_tool(f"{prefix}{hidden}", {})
                assert refused.value.code == JsonRpcCode.INVALID_PARAMS
        assert result.structured_content == {"result": 1} or result.content[0].text == "1"  # type: ignore[union-attr]

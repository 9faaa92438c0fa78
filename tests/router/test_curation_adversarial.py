"""Curation under attack: the backend's own names, case and unicode tricks, encoded separators, both answer framings.

A backend that resolves names loosely (case- and compatibility-folded, as some do) must not be
reachable around a deny rule or a rename; a renamed tool's own name is dead at both doors; refusals
carry the request's id; lists are curated whether the backend answers JSON or an event stream.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import anyio
import httpx2
import mcp_types as types
import orjson
import pytest
from mcp import MCPError
from mcp.server.lowlevel.server import Server
from mcp.shared.subscriptions import ResourceUpdated

from mcp_middleware.core import JsonRpcCode
from mcp_middleware.router import McpRouter
from mcp_middleware.router.curation import Curation, ItemRules, ResourceRules
from tests.conftest import ERAS, Era, connect
from tests.support.requests import legacy_post, legacy_session, modern_body, modern_headers
from tests.support.sse import json_of

from .curated_servers import crm_curation, crm_server
from .test_resource_updates import notes_server

pytestmark = pytest.mark.anyio

LOOSE_TOOLS = ("search_docs", "search_admin", "create")


def loose_server(calls: list[str]) -> Server[Any]:
    """A backend that finds its tools by NFKC-casefolded name (so `SEARCH_ADMIN` runs `search_admin`)."""
    tools = [types.Tool(name=name, input_schema={"type": "object"}) for name in LOOSE_TOOLS]

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        loose = unicodedata.normalize("NFKC", params.name).casefold()
        if loose not in LOOSE_TOOLS:
            return types.CallToolResult(content=[types.TextContent(text=f"no {params.name}")], is_error=True)
        calls.append(loose)
        return types.CallToolResult(content=[types.TextContent(text=f"ran {loose}")])

    return Server("loose", on_list_tools=list_tools, on_call_tool=call_tool)


def fullwidth(text: str) -> str:
    """`text` in fullwidth forms (NFKC folds them back): `search_admin` as a loose backend may read it."""
    return "".join(chr(ord(char) + 0xFEE0) for char in text)


TRICKS = [
    "SEARCH_ADMIN",
    "Search_Admin",
    fullwidth("search_admin"),
    "Search_Docs",
    "SEARCH_DOCS",
    fullwidth("s") + "earch_docs",
]


@pytest.mark.parametrize("era", ERAS)
async def test_case_and_unicode_tricks_never_reach_a_hidden_tool(era: Era, serve: Any) -> None:
    calls: list[str] = []
    router = McpRouter()
    curation = Curation(tools=ItemRules(deny=("*_admin",), rename={"search_docs": "search"}))
    router.mount("loose", loose_server(calls).streamable_http_app(), curation=curation)
    base = serve(router).base
    async with connect(f"{base}/mcp/loose", era) as mount, connect(f"{base}/mcp", era) as aggregate:
        assert sorted(tool.name for tool in (await mount.list_tools()).tools) == ["create", "search"]
        for trick in TRICKS:
            with pytest.raises(MCPError) as refused:
                await mount.call_tool(trick, {})
            assert refused.value.code == JsonRpcCode.INVALID_PARAMS, trick
            with pytest.raises(MCPError):  # unknown at the aggregate (its names are exact)
                await aggregate.call_tool(f"loose__{trick}", {})
        assert (await mount.call_tool("search", {})).content[0].text == "ran search_docs"  # type: ignore[union-attr]
        assert (await aggregate.call_tool("loose__search", {})).content[0].text == "ran search_docs"  # type: ignore[union-attr]
    assert calls == ["search_docs", "search_docs"]  # nothing hidden ever ran


@pytest.mark.parametrize("name", ["search%2Fdocs", "search/docs", "search_docs%00", "search_docs ", "crm__search"])
async def test_encoded_and_padded_names_are_not_the_renamed_tool(name: str, serve: Any) -> None:
    router = McpRouter()
    router.mount("crm", crm_server().streamable_http_app(), curation=crm_curation())
    base = serve(router).base
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{base}/mcp/crm",
            content=modern_body("tools/call", {"name": name, "arguments": {}}, request_id="abc-1"),
            headers=modern_headers("tools/call", None),
        )
    answer = json_of(response)
    assert answer["id"] == "abc-1"
    assert "crm:search_docs" not in response.text
    assert "error" in answer or answer["result"].get("isError") is True


@pytest.mark.parametrize("endpoint", ["/mcp/crm", "/mcp"])
async def test_a_refusal_carries_the_request_id_and_no_backend_call(endpoint: str, serve: Any) -> None:
    router = McpRouter()
    router.mount("crm", crm_server().streamable_http_app(), curation=crm_curation())
    base = serve(router).base
    name = "search_docs" if endpoint == "/mcp/crm" else "crm__search_docs"
    async with httpx2.AsyncClient(timeout=30) as http:
        await http.post(f"{base}/mcp", content=modern_body("tools/list"), headers=modern_headers("tools/list"))
        response = await http.post(
            f"{base}{endpoint}",
            content=modern_body("tools/call", {"name": name, "arguments": {"query": "x"}}, request_id="req-77"),
            headers=modern_headers("tools/call", name),
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": "req-77",
        "error": {"code": -32602, "message": f"Unknown tool: {name}", "data": {"name": name}},
    }


@pytest.mark.parametrize("era", ERAS)
async def test_a_hidden_name_and_a_made_up_one_get_the_same_answer_at_the_aggregate(era: Era, serve: Any) -> None:
    """Hiding means not existing: the answer for `crm__search_docs` (renamed away) and `crm__search_adminx`
    (never offered) differ only by the name, for calls, prompts and completions alike."""
    router = McpRouter()
    router.mount("crm", crm_server().streamable_http_app(), curation=crm_curation())
    base = serve(router).base

    async def answer(method: str, params: dict[str, Any], name: str) -> str:
        async with httpx2.AsyncClient(timeout=30) as http:
            if era == "legacy":
                session = await legacy_session(http, f"{base}/mcp")
                response = await legacy_post(http, f"{base}/mcp", session, method, 9, params)
            else:
                response = await http.post(
                    f"{base}/mcp",
                    content=modern_body(method, params, request_id=9),
                    headers=modern_headers(method, name if method != "completion/complete" else None),
                )
        return orjson_text(json_of(response)).replace(name, "NAME")

    for hidden, unknown in (("crm__search_docs", "crm__search_nope"), ("crm__search_admin", "crm__nothing")):
        call = {"arguments": {"query": "x"}}
        assert await answer("tools/call", {**call, "name": hidden}, hidden) == await answer(
            "tools/call", {**call, "name": unknown}, unknown
        )
    hidden_prompt, unknown_prompt = "crm__secret_plan", "crm__no_plan"
    assert await answer("prompts/get", {"name": hidden_prompt}, hidden_prompt) == await answer(
        "prompts/get", {"name": unknown_prompt}, unknown_prompt
    )
    complete = {"argument": {"name": "topic", "value": "x"}}
    hidden_ref = {**complete, "ref": {"type": "ref/prompt", "name": hidden_prompt}}
    unknown_ref = {**complete, "ref": {"type": "ref/prompt", "name": unknown_prompt}}
    assert await answer("completion/complete", hidden_ref, hidden_prompt) == await answer(
        "completion/complete", unknown_ref, unknown_prompt
    )


def orjson_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_lists_are_curated_in_json_and_in_event_streams(json_response: bool, serve: Any) -> None:
    router = McpRouter()
    app = crm_server().streamable_http_app(json_response=json_response)
    router.mount("crm", app, curation=crm_curation())
    base = serve(router).base
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await legacy_session(http, f"{base}/mcp/crm")
        response = await legacy_post(http, f"{base}/mcp/crm", session, "tools/list", 5)
        called = await legacy_post(http, f"{base}/mcp/crm", session, "tools/call", 6, {"name": "search"})
    framing = "application/json" if json_response else "text/event-stream"
    assert response.headers["content-type"].startswith(framing)
    assert called.headers["content-type"].startswith(framing)
    tools = {tool["name"]: tool for tool in json_of(response)["result"]["tools"]}
    assert sorted(tools) == ["create", "search", "search_people"]
    assert tools["search"]["annotations"]["destructiveHint"] is True
    assert json_of(called)["result"]["content"][0]["text"] == "crm:search_docs:"


@pytest.mark.parametrize("era", ERAS)
async def test_a_rename_onto_another_tools_name_shadows_it_consistently(era: Era, serve: Any) -> None:
    """`create` renamed to `search_people`: the list shows one `search_people`, and it runs `create`."""
    router = McpRouter()
    curation = Curation(tools=ItemRules(rename={"create": "search_people"}))
    router.mount("crm", crm_server().streamable_http_app(), curation=curation)
    base = serve(router).base
    async with connect(f"{base}/mcp/crm", era) as mount, connect(f"{base}/mcp", era) as aggregate:
        names = [tool.name for tool in (await mount.list_tools()).tools]
        merged = [tool.name for tool in (await aggregate.list_tools()).tools]
        ran = await mount.call_tool("search_people", {"query": "q"})
        ran_there = await aggregate.call_tool("crm__search_people", {"query": "q"})
    assert names.count("search_people") == 1 and "create" not in names
    assert merged.count("crm__search_people") == 1 and "crm__create" not in merged
    assert ran.content[0].text == ran_there.content[0].text == "crm:create:q"  # type: ignore[union-attr]


async def test_a_hidden_resource_is_never_watched_for_a_listener(serve: Any) -> None:
    """Modern `subscriptions/listen` naming a curated-away URI opens no watch and delivers no update."""
    router = McpRouter()
    router.mount(
        "notes",
        notes_server().streamable_http_app(),
        curation=Curation(resources=ResourceRules(deny=("notes://other",))),
    )
    served = serve(router)
    async with connect(served.mcp_url, "modern") as client:
        assert {r.uri for r in (await client.list_resources()).resources} == {"notes+notes://today"}
        watched = ["notes+notes://other", "notes+notes://today"]
        async with client.listen(resource_subscriptions=watched) as subscription:
            await anyio.sleep(0.3)  # the aggregate's watches at the backend are open by now
            assert set(router.aggregate.watches._watches) == {("notes", "notes://today")}
            await client.call_tool("notes__touch", {"uri": "notes://other"})  # hidden: nothing comes
            await client.call_tool("notes__touch", {"uri": "notes://today"})
            with anyio.fail_after(5):
                event = await subscription.__anext__()
    assert event == ResourceUpdated(uri="notes+notes://today")

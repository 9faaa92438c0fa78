"""List time and call time never disagree, for any allow/deny/rename config and any tool set (hypothesis).

Three views of one curation are compared: what the path mount lists (the streaming layer's
rewrite of a real JSON-RPC list answer), what the aggregate's catalog lists (`curate_model` over
`mcp_types.Tool`), and what a call reaches (`ItemRules.backend`, the layer's call-time question).
Calls are checked against a strict backend (exact names) and a loose one (NFKC-casefolded names):
a listed name reaches the tool it stands for; no spelling of anything reaches a hidden tool.
The last test asks the same of real doors: a served router (path mount and aggregate) in front of
a loose backend, with the SDK client in a drawn era.
"""

from __future__ import annotations

import contextlib
import unicodedata
from typing import Any

import anyio
import mcp_types as types
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import MCPError
from mcp.server.lowlevel.server import Server

from mcp_middleware.router import McpRouter, NamingPolicy
from mcp_middleware.router.curated_catalog import curate_model
from mcp_middleware.router.curation import Curation, ItemRules
from mcp_middleware.router.curation_layer import CuratedList
from tests.conftest import ERAS, Era, connect, serve_app


def fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


NAMES = st.sampled_from(
    ["search", "search_docs", "Search_Docs", "search_admin", "drop", "DROP_all", "create", "\uff43reate", "a", "b"]
)
PUBLIC = NAMES.filter(str.isascii)
"""Rename targets are portable names (the constructor refuses others)."""
GLOBS = st.sampled_from(["search_*", "*_admin", "*", "drop*", "DROP*", "a", "[ab]", "?", "create", "*docs"])


@st.composite
def configs(draw: st.DrawFn) -> tuple[list[str], ItemRules]:
    tools = draw(st.lists(NAMES, min_size=1, max_size=8, unique_by=fold))  # one loose backend: unique folds
    allow = tuple(draw(st.lists(GLOBS, max_size=3)))
    deny = tuple(draw(st.lists(GLOBS, max_size=3)))
    renamed = draw(st.lists(st.sampled_from(tools), max_size=3, unique=True))
    targets = draw(st.lists(PUBLIC, min_size=len(renamed), max_size=len(renamed), unique_by=fold))
    return tools, ItemRules(allow=allow, deny=deny, rename=dict(zip(renamed, targets, strict=True)))


def mount_list(rules: ItemRules, tools: list[str]) -> dict[str, str]:
    """public name -> backend name, as the path mount's layer rewrites a real list answer."""
    listing = CuratedList(_discard, method="tools/list", request_id=1, curation=Curation(tools=rules), max_bytes=10**6)
    items = [{"name": t, "title": t, "inputSchema": {}} for t in tools]  # the title remembers the backend name
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"tools": items}}
    rewritten = listing._rewrite(orjson.dumps(answer))
    assert rewritten is not None
    listed = orjson.loads(rewritten)["result"]["tools"]
    by_public = {item["name"]: item["title"] for item in listed}
    assert len(by_public) == len(listed)  # no public name twice
    return by_public


def catalog_list(rules: ItemRules, tools: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    curation = Curation(tools=rules)
    for tool in tools:
        curated = curate_model(curation, None, "tools", "name", types.Tool(name=tool, input_schema={}))
        if isinstance(curated, tuple):
            found[curated[1]] = tool
    return found


def spellings(tools: list[str], rules: ItemRules) -> set[str]:
    names = {*tools, *rules.rename.values(), *rules.rename}
    return names | {n.upper() for n in names} | {n.title() for n in names} | {fold(n) for n in names}


@settings(max_examples=400, deadline=None)
@given(configs())
def test_a_listed_tool_is_callable_and_a_hidden_one_is_refused(config: tuple[list[str], ItemRules]) -> None:
    tools, rules = config
    listed = mount_list(rules, tools)
    assert catalog_list(rules, tools) == listed  # both doors list the same surface
    for public, tool in listed.items():
        assert rules.backend(public) == tool  # listed: callable, and it reaches the tool it stands for
    hidden = {fold(tool) for tool in tools if tool not in listed.values()}
    exact = set(tools)
    for name in spellings(tools, rules):
        reached = rules.backend(name)
        if reached is None:
            continue
        if name not in listed:  # not listed under this name: it must reach no tool at all, strictly or loosely
            assert reached not in exact, (name, reached)
        assert fold(reached) not in hidden or reached in listed.values(), (name, reached)


async def _discard(message: object) -> None:
    return None


# --- the same property through real servers ----------------------------------------------------


def _loose_backend(tools: list[str], ran: list[str]) -> Server[Any]:
    """A low-level server offering `tools` and resolving calls loosely (NFKC-casefolded), logging what ran."""
    listed = [types.Tool(name=name, input_schema={"type": "object"}) for name in tools]
    by_fold = {fold(name): name for name in tools}

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = by_fold.get(fold(params.name))
        if tool is None:
            return types.CallToolResult(content=[types.TextContent(text="no such tool")], is_error=True)
        ran.append(tool)
        return types.CallToolResult(content=[types.TextContent(text=f"ran {tool}")])

    return Server("loose", on_list_tools=list_tools, on_call_tool=call_tool)


async def _walk(base: str, era: Era, tools: list[str], rules: ItemRules, ran: list[str]) -> None:
    expected = mount_list(rules, tools)
    naming = NamingPolicy()  # the aggregate's names: `loose__` + the name, hashed when not portable
    for target, public_of in ((f"{base}/mcp/loose", str), (f"{base}/mcp", lambda n: naming.prefixed("loose", n))):
        async with connect(target, era) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            assert listed == {public_of(name) for name in expected}  # the real door lists what the rules say
            for public, tool in expected.items():
                ran.clear()
                result = await client.call_tool(public_of(public), {})
                assert not result.is_error and ran == [tool]  # listed: callable, and reaches its tool
            for name in sorted(spellings(tools, rules) - set(expected)):
                ran.clear()
                with contextlib.suppress(MCPError):
                    await client.call_tool(public_of(name), {})
                assert all(tool in expected.values() for tool in ran), (name, ran)  # nothing hidden ran


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.sampled_from(ERAS))
def test_real_doors_never_disagree_with_the_rules(config: tuple[list[str], ItemRules], era: Era) -> None:
    tools, rules = config
    ran: list[str] = []
    router = McpRouter()
    router.mount("loose", _loose_backend(tools, ran).streamable_http_app(), curation=Curation(tools=rules))
    with serve_app(router) as served:
        anyio.run(_walk, served.base, era, tools, rules, ran)


def test_remembered_decisions_stay_bounded_whatever_names_clients_send() -> None:
    rules = ItemRules(allow=("search_*",), deny=("*_admin",), rename={"search_docs": "search"})
    for index in range(10_000):
        assert rules.backend(f"search_{index}_admin") is None
        assert rules.backend(f"search_{index}") == f"search_{index}"
    assert len(rules._resolved) <= 4096 and len(rules._decided) <= 4096
    assert rules.backend("search") == "search_docs" and rules.backend("Search_Docs") is None

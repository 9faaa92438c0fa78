"""Backends and curations for the curation and virtual-server tests (real `MCPServer`s)."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer

from mcp_middleware.router.curation import Curation, ItemRules, Override, ResourceRules

CRM_TOOLS = ("search_docs", "search_people", "search_admin", "create", "drop_table")


def crm_server(name: str = "crm", tools: tuple[str, ...] = CRM_TOOLS) -> MCPServer:
    """Tools answering `{server}:{tool}:{query}` (read-only annotated), two prompts, public and private resources."""
    server = MCPServer(name)
    for tool in tools:

        def make(tool: str = tool) -> None:
            @server.tool(
                name=tool,
                description=f"{tool} of {name}",
                annotations=types.ToolAnnotations(read_only_hint=True, title=f"{tool} title"),
            )
            def handler(query: str = "") -> str:
                return f"{name}:{tool}:{query}"

        make()

    @server.prompt(name="summarize")
    def summarize(topic: str) -> str:
        """Summarize a topic."""
        return f"[{name}] summarize {topic}"

    @server.prompt(name="secret_plan")
    def secret_plan() -> str:
        """Not for clients."""
        return "the plan"

    @server.resource(f"{name}://public/readme")
    def readme() -> str:
        return f"readme of {name}"

    @server.resource(f"{name}://private/keys")
    def keys() -> str:
        return "the keys"

    @server.resource(f"{name}://public/items/{{item}}")
    def item(item: str) -> str:
        return f"{name} item {item}"

    @server.resource(f"{name}://private/{{path}}")
    def private(path: str) -> str:
        return f"private {path}"

    return server


def crm_curation(refusal: str = "unknown") -> Curation:
    return Curation(
        tools=ItemRules(
            allow=("search_*", "create"),
            deny=("*_admin",),
            rename={"search_docs": "search"},
            override={
                "search": Override(description="Search the docs", annotations={"destructiveHint": True}),
                "create": Override(annotations={"readOnlyHint": False}),
            },
        ),
        prompts=ItemRules(deny=("secret_*",), rename={"summarize": "summary"}),
        resources=ResourceRules(allow=("crm://public/",)),
        refusal=refusal,  # type: ignore[arg-type]
    )


VISIBLE_TOOLS = ["create", "search", "search_people"]
HIDDEN_TOOLS = ["search_admin", "drop_table", "search_docs"]


def paged_server(prefix: str, count: int, page: int) -> Server[Any]:
    """A low-level server paging its own tools (`page` per page, cursors are offsets)."""
    tools = [types.Tool(name=f"{prefix}{index:03d}", input_schema={"type": "object"}) for index in range(count)]

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + page
        return types.ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < count else None)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=f"ran {params.name}")])

    return Server(f"paged-{prefix}", on_list_tools=list_tools, on_call_tool=call_tool)


def build_crm() -> MCPServer:
    """`app = "tests.router.curated_servers:build_crm"` for gateway tests."""
    return crm_server()


def build_tickets() -> MCPServer:
    return crm_server("tickets", ("create", "close", "delete"))

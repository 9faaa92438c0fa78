"""Many MCP servers under one path: path mounts at /mcp/{name} and one aggregated /mcp.

Run: `python -m examples.router_hub` (serves on 127.0.0.1:8000), then point any MCP client at
`http://127.0.0.1:8000/mcp/notes` (one server, its own names) or `http://127.0.0.1:8000/mcp`
(every server, names like `notes__add` and `clock__now`).

Add a remote server with `HttpBackend("https://…/mcp", headers={"Authorization": "Bearer …"})`
and a local command with `StdioBackend("npx", ["-y", "@modelcontextprotocol/server-everything"])`.
"""

from __future__ import annotations

import time

from mcp.server.mcpserver import MCPServer

from mcp_middleware.router import InProcessBackend, McpRouter, NamingPolicy, PrefixMode


def notes_server() -> MCPServer:
    server = MCPServer("notes")
    notes: list[str] = []

    @server.tool()
    def add(text: str) -> int:
        """Add a note; returns how many there are."""
        notes.append(text)
        return len(notes)

    @server.resource("notes://all")
    def everything() -> str:
        """All notes, one per line."""
        return "\n".join(notes)

    return server


def clock_server() -> MCPServer:
    server = MCPServer("clock")

    @server.tool()
    def now() -> float:
        """Seconds since the epoch."""
        return time.time()

    return server


def build_router() -> McpRouter:
    router = McpRouter(naming=NamingPolicy(separator="__", prefix=PrefixMode.ALWAYS))
    router.mount("notes", InProcessBackend(notes_server().streamable_http_app()))
    router.mount("clock", InProcessBackend(clock_server().streamable_http_app()))
    return router


app = build_router()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)

"""An MCP server over stdio, which the reference gateway starts, supervises and mounts."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("stdio-demo")


@server.tool()
def reverse(text: str) -> str:
    """Reverse a string."""
    return text[::-1]


@server.tool()
def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


if __name__ == "__main__":
    server.run("stdio")

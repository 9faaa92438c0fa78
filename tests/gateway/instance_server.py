"""A backend that says which gateway instance serves it (the instance's env), for the scale-out test."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer


def build() -> MCPServer:
    server = MCPServer("instance")

    @server.tool()
    def whoami() -> str:
        """The gateway instance this request reached."""
        return os.environ.get("MCP_GATEWAY_INSTANCE", "?")

    @server.tool()
    def limited() -> str:
        """A tool behind a global rate limit."""
        return os.environ.get("MCP_GATEWAY_INSTANCE", "?")

    return server

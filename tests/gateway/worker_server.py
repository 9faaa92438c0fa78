"""A backend that says which worker process serves it, for the `--workers` tests and benchmark."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer


def build() -> MCPServer:
    server = MCPServer("worker")

    @server.tool()
    def pid() -> str:
        """The process id of the gateway worker this request reached."""
        return str(os.getpid())

    @server.tool()
    def echo(text: str) -> str:
        """The text, back."""
        return text

    return server

"""A stdio MCP server for the supervision tests: its tools depend on a generation file it bumps at start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer


def main() -> None:
    state = Path(sys.argv[1])
    generation = int(state.read_text()) + 1 if state.exists() else 1
    state.write_text(str(generation))
    server = MCPServer("stdio-test")

    @server.tool()
    def pid() -> int:
        """The process id (the test kills it)."""
        return os.getpid()

    @server.tool(name=f"generation_{generation}")
    def current() -> int:
        """Only this generation of the process offers this tool."""
        return generation

    server.run("stdio")


if __name__ == "__main__":
    main()

"""A stdio MCP server that talks on stderr: a line at start, and whatever `shout` is given."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer


def main() -> None:
    server = MCPServer("noisy")
    print("noisy: starting up", file=sys.stderr, flush=True)

    @server.tool()
    def shout(text: str, times: int = 1) -> int:
        """Write `text` to stderr `times` times (no newline at all when `text` is huge)."""
        for _ in range(times):
            sys.stderr.write(text if len(text) > 1000 else f"{text}\n")
        sys.stderr.flush()
        return times

    @server.tool()
    def pid() -> int:
        """The process id (the test kills it)."""
        return os.getpid()

    server.run("stdio")


if __name__ == "__main__":
    main()

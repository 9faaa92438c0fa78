"""A replica of a pooled backend that says which replica it is (`POOL_REPLICA`, or the name given).

Its tools: `whoami` (read-only), `lookup` (read-only, idempotent), `record` (neither: it must not run
twice; it waits `delay` seconds so that calls are in flight when a test kills the replica), and
`search_docs` (no annotations; a pool's `retry_tools` may allow it).

`uvicorn --factory tests.router.pool_replica:app` serves it (the name from the environment).
"""

from __future__ import annotations

import os

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp

READ_ONLY = ToolAnnotations(read_only_hint=True)
IDEMPOTENT = ToolAnnotations(read_only_hint=True, idempotent_hint=True)


def build(name: str | None = None) -> MCPServer:
    replica = name or os.environ.get("POOL_REPLICA", "?")
    server = MCPServer("pooled")

    @server.tool(annotations=READ_ONLY)
    def whoami() -> str:
        """Which replica answered."""
        return replica

    @server.tool(annotations=IDEMPOTENT)
    async def lookup(key: str, delay: float = 0.0) -> str:
        """A read: the same answer every time."""
        await anyio.sleep(delay)
        return f"{key}@{replica}"

    @server.tool()
    async def record(entry: str, delay: float = 0.0) -> str:
        """A write: running it twice records twice."""
        await anyio.sleep(delay)
        return f"recorded {entry} at {replica}"

    @server.tool()
    def search_docs(query: str) -> str:
        """No annotations: safe to repeat only if the operator says so."""
        return f"{query}@{replica}"

    return server


def app() -> ASGIApp:
    return build().streamable_http_app()

"""An MCPServer wrapped in the mcp-middleware core, served on 127.0.0.1:$PORT (default 8000).

    make run                      # or: PORT=9000 python examples/core_server.py

Call it from the `mcp` SDK:

    async with mcp.Client("http://127.0.0.1:8000/mcp") as client:
        await client.call_tool("add", {"a": 1, "b": 2})
"""

from __future__ import annotations

import logging
import os

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

from mcp_middleware import McpCoreMiddleware
from mcp_middleware.core import McpRequest, ResponseOutcome

server = MCPServer("mcp-middleware demo")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def countdown(steps: int, ctx: Context) -> str:
    """Count down, reporting progress once per second."""
    for done in range(steps):
        await ctx.report_progress(done, steps, f"{steps - done} to go")
        await anyio.sleep(1)
    return "lift-off"


log = logging.getLogger("demo")


def log_outcome(request: McpRequest, outcome: ResponseOutcome) -> None:
    code = outcome.error_code if outcome.error else ("tool_error" if outcome.is_tool_error else "ok")
    log.info(
        "%s %s %s -> %s %s in %.1f ms",
        request.era.value,
        request.method or request.http_method,
        request.target or "",
        outcome.status,
        code,
        outcome.duration * 1000,
    )


app = McpCoreMiddleware(server.streamable_http_app(), on_outcome=log_outcome)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    port = int(os.environ.get("PORT", "8000"))
    print(f"MCP endpoint: http://127.0.0.1:{port}/mcp")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")

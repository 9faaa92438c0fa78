"""Demo servers the reference gateway mounts on its embedded defaults (examples/gateway/gateway.toml).

- `server`: an `mcp` SDK `MCPServer` with a few tools (one reports progress);
- `fastmcp_server`: a `fastmcp.FastMCP` server, if the `fastmcp` extra is installed;
- `stdio_server.py` beside this file: an `MCPServer` over stdio, started by the gateway.
"""

from __future__ import annotations

import contextlib
import datetime

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("demo", instructions="Tools to try the mcp-middleware gateway with.")


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
    """Count down from `steps`, reporting progress every half second."""
    steps = max(0, min(steps, 20))
    for done in range(steps):
        await ctx.report_progress(done, steps, f"{steps - done} to go")
        await anyio.sleep(0.5)
    return "lift-off"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def utc_now() -> str:
    """The current UTC time (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@server.resource("demo://readme")
def readme() -> str:
    """What this server is."""
    return "The demo server of the mcp-middleware reference gateway."


@server.prompt()
def greet(name: str) -> str:
    """A greeting prompt."""
    return f"Say hello to {name}."


def _fastmcp() -> object:
    from fastmcp import FastMCP

    fast = FastMCP("fastmcp-demo")

    @fast.tool
    def multiply(a: float, b: float) -> float:
        """Multiply two numbers."""
        return a * b

    @fast.tool(annotations={"readOnlyHint": True})
    def utc_now() -> str:
        """The current UTC time (ISO 8601): the fallback of the `demo` server's clock (the example's route)."""
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    return fast


# The fastmcp extra is optional; the gateway skips a server marked `optional` when it is missing.
with contextlib.suppress(ImportError):
    fastmcp_server = _fastmcp()

"""The MCP servers the tests talk to: one `MCPServer` with a tool for each behaviour under test."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

PROGRESS_INTERVAL = 0.3
"""Seconds between progress notifications of the `slow` tool."""


@dataclass
class ToolLog:
    """What the `slow` tool did, seen from the server side (for cancellation tests)."""

    events: list[str] = field(default_factory=list)


def build_server(log: ToolLog | None = None) -> MCPServer:
    """A fresh server (an SDK app's lifespan can start only once, so each test app gets its own)."""
    log = log if log is not None else ToolLog()
    server = MCPServer("test-server")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def slow(steps: int, ctx: Context) -> str:
        """Report progress every PROGRESS_INTERVAL seconds, then return."""
        log.events.append("started")
        try:
            for done in range(steps):
                await ctx.report_progress(done + 1, steps, f"step {done + 1}")
                await anyio.sleep(PROGRESS_INTERVAL)
        except anyio.get_cancelled_exc_class():
            log.events.append("cancelled")
            raise
        log.events.append("finished")
        return f"done after {steps} steps"

    @server.tool()
    def failing(reason: str) -> str:
        """Always fails: the client sees a tool error (isError), not a protocol error."""
        raise ValueError(f"failed on purpose: {reason}")

    @server.tool()
    def large(size: int) -> str:
        """Return `size` bytes of text."""
        return "x" * size

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    def lookup(key: str) -> dict[str, str]:
        """Read-only lookup in a fixed table."""
        return {"key": key, "value": {"a": "alpha", "b": "beta"}.get(key, "unknown")}

    @server.resource("demo://greeting")
    def greeting() -> str:
        """A static text resource."""
        return "hello from the test server"

    @server.prompt()
    def greet(name: str) -> str:
        """A prompt with one argument."""
        return f"Say hello to {name}."

    return server

"""A backend that says which worker process serves it, for the `--workers` tests and benchmark."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator

from mcp.server.mcpserver import MCPServer


def build() -> MCPServer:
    server = MCPServer("worker")

    @server.tool()
    def pid() -> str:
        """The process id of the gateway worker this request reached."""
        return str(os.getpid())

    @server.tool()
    async def hold(seconds: float) -> str:
        """Block this worker's event loop for `seconds` (at most 5), then say its process id.

        Blocking on purpose: a worker that is not accepting lets the next connections reach the
        others, so a test can spread its clients over the workers without trusting the kernel's
        choice (an idle set of workers tends to hand every new connection to the same one).
        """
        time.sleep(min(max(seconds, 0.0), 5.0))  # noqa: ASYNC251 (the point: the loop stops)
        return str(os.getpid())

    @server.tool()
    def echo(text: str) -> str:
        """The text, back."""
        return text

    return server


def failing() -> MCPServer:
    """A server whose start-up fails (its lifespan raises) in every process that starts it."""

    @contextlib.asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[None]:
        raise RuntimeError("this backend cannot start")
        yield

    return MCPServer("failing", lifespan=lifespan)

"""The core in a FastAPI app that also has REST routes: only `/mcp` is touched.

python examples/fastapi_app.py          # serves on 127.0.0.1:$PORT (default 8000)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer

from mcp_middleware import CoreConfig, McpCoreMiddleware

server = MCPServer("fastapi-demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # A mounted sub-app's lifespan never runs: start the MCP session manager here.
    async with server.session_manager.run():
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app.mount("/", server.streamable_http_app())  # serves /mcp; REST routes above win
app.add_middleware(McpCoreMiddleware, config=CoreConfig(paths=("/mcp",), max_body_size=1024 * 1024))

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))

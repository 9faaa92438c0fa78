"""A `fastmcp.FastMCP` server behind the core (needs the extra: pip install "mcp-middleware[fastmcp]").

python examples/fastmcp_app.py          # serves on 127.0.0.1:$PORT (default 8000)
"""

from __future__ import annotations

import os

import uvicorn
from fastmcp import FastMCP

from mcp_middleware import McpCoreMiddleware

server = FastMCP("fastmcp-demo")


@server.tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


# http_app() is a Starlette app with a lifespan; uvicorn runs it through the core.
app = McpCoreMiddleware(server.http_app(path="/mcp"))

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))

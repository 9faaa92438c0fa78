"""Rate limiting an MCP server: per-caller buckets per tool, a server-wide bucket, a daily quota.

    python examples/ratelimit_server.py    # serves on 127.0.0.1:$PORT (default 8000)

Try it: call `search_docs` quickly more than ten times; the eleventh call is refused with
HTTP 429, `Retry-After`, `RateLimit-Policy`/`RateLimit`, and a JSON-RPC error -32014 whose
`data` says which policy refused and how many milliseconds to wait. `summarize` is not
starved by the search bucket.
"""

from __future__ import annotations

import os

import uvicorn
from mcp.server.mcpserver import MCPServer

from mcp_middleware.ratelimit import BucketPolicy, QuotaPolicy, RateLimitMiddleware, global_key

server = MCPServer("rate-limited demo")


@server.tool()
def search_docs(query: str) -> str:
    """Search the documentation (expensive: limited to 5/s per caller, bursts of 10)."""
    return f"3 documents match {query!r}"


@server.tool()
def search_web(query: str) -> str:
    """Search the web (shares the search bucket with search_docs)."""
    return f"10 pages match {query!r}"


@server.tool()
def summarize(text: str) -> str:
    """Summarize a text (only the per-caller and server-wide limits apply)."""
    return text[:40]


app = RateLimitMiddleware(
    server.streamable_http_app(),
    policies=[
        # 5 requests a second per caller, bursts of 10, for every search_* tool together.
        BucketPolicy("search", selector="tools/call:search_*", rate=5, capacity=10),
        # Every request of one caller (tools, lists, reads): 20 a second.
        BucketPolicy("per-caller", selector="*", rate="20/second"),
        # The whole server, all callers together: 200 a second, bursts of 400.
        BucketPolicy("server", selector="*", rate=200, capacity=400, key=global_key),
        # A daily quota of tool calls per caller, counted by `limits` (fixed window).
        QuotaPolicy("daily", selector="tools/call", limit="1000/day"),
    ],
    # Behind a load balancer, name it so the client address comes from X-Forwarded-For:
    trusted_proxies=[p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))

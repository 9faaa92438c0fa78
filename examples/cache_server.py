"""An MCP server behind the response cache, served on 127.0.0.1:$PORT (default 8000).

    python examples/cache_server.py

Lists and reads are answered from the cache for as long as the server's `ttlMs` allows (the
`cache_hints` below); the read-only `forecast` tool is cached because a rule opts it in and the
server annotates it `readOnlyHint`; `set_forecast` changes the data and says so with a
list_changed-style resource update, which drops the cached read. Every answer carries
`x-mcp-cache: hit | miss | stale`.

    async with mcp.Client("http://127.0.0.1:8000/mcp") as client:
        await client.call_tool("forecast", {"city": "Oslo"})   # miss: the backend answers
        await client.call_tool("forecast", {"city": "Oslo"})   # hit: the backend is not asked
"""

from __future__ import annotations

import logging
import os

import uvicorn
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

from mcp_middleware.cache import MemoryCacheStore, ResponseCacheMiddleware

LISTS = CacheHint(ttl_ms=300_000, scope="public")  # the same for everyone, fresh for 5 minutes
server = MCPServer(
    "weather",
    cache_hints={
        "tools/list": LISTS,
        "prompts/list": LISTS,
        "resources/list": LISTS,
        "resources/templates/list": LISTS,
        "server/discover": LISTS,
        "resources/read": CacheHint(ttl_ms=60_000, scope="private"),
    },
)
FORECASTS = {"Oslo": "snow", "Lisbon": "sun"}


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
def forecast(city: str) -> str:
    """Tomorrow's weather in `city` (read-only: safe to cache)."""
    return FORECASTS.get(city, "unknown")


@server.tool()
async def set_forecast(city: str, weather: str, ctx: Context) -> str:
    """Change a forecast (not read-only: never cached) and tell subscribers the summary changed."""
    FORECASTS[city] = weather
    await ctx.notify_resource_updated("weather://summary")
    return f"{city}: {weather}"


@server.resource("weather://summary")
def summary() -> str:
    """Every forecast, one per line."""
    return "\n".join(f"{city}: {weather}" for city, weather in sorted(FORECASTS.items()))


app = ResponseCacheMiddleware(
    server.streamable_http_app(),
    store=MemoryCacheStore(max_entries=10_000, max_bytes=64 * 1024 * 1024, max_entry_bytes=1024 * 1024),
    ttl=600,  # our ceiling; the server's ttlMs can only shorten it
    rules={"tools/call:forecast": 30},  # opt in: cached 30 s (it is annotated readOnlyHint)
    stale_grace=300,  # serve a stale answer (marked in _meta) for 5 minutes if the server fails
)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))

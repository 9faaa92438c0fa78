"""Limits shared by every instance: buckets in Redis, quotas in Redis, fail-open or fail-closed.

    REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.ratelimit_redis:app --port 8001
    REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.ratelimit_redis:app --port 8002

Both instances draw from the same buckets (one atomic Lua script per decision, on the Redis
server's clock). Stop Redis and the instances keep serving (`RATELIMIT_FAILURE=open`, the
default: a warning is logged and counted) or answer 503 (`RATELIMIT_FAILURE=closed`); start it
again and limiting resumes by itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.routing import Mount

from mcp_middleware.ratelimit import BucketPolicy, FailureMode, QuotaPolicy, RateLimitMiddleware, RedisBucketStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_TIMEOUT = float(os.environ.get("REDIS_TIMEOUT", "0.25"))  # seconds; a slow Redis counts as down
FAILURE: FailureMode = "closed" if os.environ.get("RATELIMIT_FAILURE") == "closed" else "open"

server = MCPServer("shared limits demo")


@server.tool()
def search(query: str) -> str:
    """An expensive tool: 2 per second per caller, bursts of 5, across every instance."""
    return f"results for {query!r}"


@server.tool()
def add(a: int, b: int) -> int:
    """A cheap tool: only the hourly quota applies."""
    return a + b


limited = RateLimitMiddleware(
    server.streamable_http_app(),
    policies=[
        BucketPolicy("search", selector="tools/call:search", rate=2, capacity=5),
        QuotaPolicy("hourly", selector="tools/call", limit="500/hour", strategy="sliding-window-counter"),
    ],
    store=RedisBucketStore.from_url(REDIS_URL, timeout=REDIS_TIMEOUT),
    quota_storage=REDIS_URL,  # any `limits` storage URI
    quota_timeout=REDIS_TIMEOUT,
    namespace="demo:",  # keeps this server's keys apart from others sharing the Redis
    failure=FAILURE,
)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield
    await limited.aclose()


app = Starlette(routes=[Mount("/", app=limited)], lifespan=lifespan)

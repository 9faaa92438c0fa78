"""The stack of `stack_server.py`, added to a FastAPI app with `add_middleware`; on 127.0.0.1:$PORT (default 8000).

    python examples/fastapi_stack.py

Starlette (and so FastAPI) makes the LAST middleware added the OUTERMOST. So add them
innermost first: the breaker first, tracing last. Written the other way round, the cache
would sit outside auth (it then turns itself off and logs an error; see docs/security.md).
REST routes (`/health`) pass through untouched: every layer is limited to `/mcp`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer

from mcp_middleware import (
    AuthMiddleware,
    BucketPolicy,
    CircuitBreakerMiddleware,
    CoreConfig,
    RateLimitMiddleware,
    ResponseCacheMiddleware,
    StaticTokenVerifier,
    TracingMiddleware,
)

PORT = int(os.environ.get("PORT", "8000"))
RESOURCE = os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{PORT}") + "/mcp"

server = MCPServer("fastapi-stacked", cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="private")})


@server.tool()
def whoami() -> str:
    """Who the access token says you are."""
    token = get_access_token()
    return (token.subject or "?") if token else "anonymous"


@server.tool()
def admin_reset() -> str:
    """Needs the `admin` scope."""
    return "reset"


def caller(subject: str, *scopes: str) -> AccessToken:
    return AccessToken(token="", client_id=f"{subject}-cli", subject=subject, scopes=list(scopes))


# Development tokens only: in production pass a JwksTokenVerifier or IntrospectionTokenVerifier.
verifier = StaticTokenVerifier(
    {"alice-token": caller("alice", "mcp:read", "admin"), "bob-token": caller("bob", "mcp:read")},
    resource=RESOURCE,
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with server.session_manager.run():  # a mounted app's own lifespan never runs
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app.mount("/", server.streamable_http_app())
only_mcp = CoreConfig(paths=("/mcp",))
# Innermost first: each add_middleware wraps everything added before it.
app.add_middleware(CircuitBreakerMiddleware, config=only_mcp)  # 5. next to the backend
app.add_middleware(ResponseCacheMiddleware, ttl=30, config=only_mcp)  # 4. inside auth: a partition per caller
app.add_middleware(  # 3. inside auth: a bucket per caller
    RateLimitMiddleware, policies=[BucketPolicy("per-user", rate=10.0, capacity=20.0)], config=only_mcp
)
app.add_middleware(  # 2. auth: a principal for everything inside
    AuthMiddleware,
    verifier=verifier,
    resource=RESOURCE,
    required_scopes=["mcp:read"],
    scopes={"tools/call:admin_*": ["admin"]},
    filter_lists=True,
    config=only_mcp,
)
app.add_middleware(TracingMiddleware, config=only_mcp)  # 1. outermost: sees every refusal

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT)

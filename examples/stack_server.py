"""Every middleware around one MCPServer, in the safe order, built by `stack()`; on 127.0.0.1:$PORT (default 8000).

    python examples/stack_server.py

`stack()` puts the layers in the recommended order whatever order you write them in,
outermost first: tracing → auth → rate limit → cache → breaker → the server. Two fixed
development tokens stand for two callers (`alice-token` may call `admin_reset`, `bob-token`
may not); each gets their own rate-limit bucket and their own cache partition:

    headers = {"Authorization": "Bearer alice-token"}
    async with httpx2.AsyncClient(headers=headers) as http:
        async with mcp.Client(streamable_http_client("http://127.0.0.1:8000/mcp", http_client=http)) as client:
            await client.call_tool("whoami", {})      # "alice"
"""

from __future__ import annotations

import os

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer

from mcp_middleware import BucketPolicy, StaticTokenVerifier, stack

PORT = int(os.environ.get("PORT", "8000"))
RESOURCE = os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{PORT}") + "/mcp"


def build_server() -> MCPServer:
    # tools/list may be cached, for one caller at a time: it is filtered by what each caller may call.
    server = MCPServer("stacked", cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="private")})

    @server.tool()
    def whoami() -> str:
        """Who the access token says you are."""
        token = get_access_token()
        return (token.subject or "?") if token else "anonymous"

    @server.tool()
    def admin_reset() -> str:
        """Needs the `admin` scope."""
        return "reset"

    return server


def caller(subject: str, *scopes: str) -> AccessToken:
    return AccessToken(token="", client_id=f"{subject}-cli", subject=subject, scopes=list(scopes))


# Development tokens only: in production pass a JwksTokenVerifier or IntrospectionTokenVerifier.
verifier = StaticTokenVerifier(
    {"alice-token": caller("alice", "mcp:read", "admin"), "bob-token": caller("bob", "mcp:read")},
    resource=RESOURCE,
)

app = stack(
    build_server().streamable_http_app(),
    tracing={"access_log": True},
    auth={
        "verifier": verifier,
        "resource": RESOURCE,
        "required_scopes": ["mcp:read"],
        "scopes": {"tools/call:admin_*": ["admin"]},
        "filter_lists": True,
    },
    ratelimit={"policies": [BucketPolicy("per-user", rate=10.0, capacity=20.0)]},
    cache={"ttl": 30},
    breaker=True,
)

if __name__ == "__main__":
    print(f"MCP endpoint: {RESOURCE}   (Authorization: Bearer alice-token | bob-token)")
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="info")

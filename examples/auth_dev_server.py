"""An `MCPServer` protected by OAuth 2.1, with the embedded authorization server on the same origin.

    python examples/auth_dev_server.py      # serves on 127.0.0.1:$PORT (default 8000)

Point any MCP client with OAuth support at http://127.0.0.1:8000/mcp: it finds the
protected-resource metadata, registers, logs in (the development server approves at
once as `dev-user`) and calls `whoami`. `delete_note` needs the `admin` scope, so the
client is asked to step up. For production, replace the embedded server by your
identity provider (see docs/auth.md) and keep the middleware.
"""

from __future__ import annotations

import os

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.auth import AuthMiddleware
from mcp_middleware.auth.server import EmbeddedAuthorizationServer


def build_server() -> MCPServer:
    server = MCPServer("auth-demo")

    @server.tool()
    def whoami() -> str:
        """Who the access token says you are."""
        token = get_access_token()
        return f"{token.subject} ({' '.join(token.scopes)})" if token else "anonymous"

    @server.tool()
    def delete_note(title: str) -> str:
        """Delete a note (needs the admin scope)."""
        return f"deleted {title}"

    return server


def build_app(base_url: str, mcp_app: ASGIApp | None = None) -> ASGIApp:
    """The whole origin: `/mcp` (protected), the authorization server, and the metadata documents."""
    mcp_app = mcp_app or build_server().streamable_http_app()
    auth_server = EmbeddedAuthorizationServer(
        issuer=base_url, scopes_supported=["notes:read", "admin"], default_scopes=["notes:read"], auto_approve=True
    )

    async def by_path(scope: Scope, receive: Receive, send: Send) -> None:
        to_mcp = scope["type"] != "http" or scope["path"].startswith("/mcp")
        await (mcp_app if to_mcp else auth_server)(scope, receive, send)

    resource = f"{base_url}/mcp"
    return AuthMiddleware(
        by_path,
        verifier=auth_server.verifier(audience=resource),
        resource=resource,
        authorization_servers=[base_url],
        required_scopes=["notes:read"],
        scopes={"tools/call:delete_*": ["admin"]},
        filter_lists=True,
    )


PORT = int(os.environ.get("PORT", "8000"))
app = build_app(f"http://127.0.0.1:{PORT}")

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT)

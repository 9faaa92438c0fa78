"""A `fastmcp.FastMCP` server behind `AuthMiddleware` (needs the extra: pip install "mcp-middleware[fastmcp]").

    python examples/auth_fastmcp.py         # serves on 127.0.0.1:$PORT (default 8000)

Development setup: a fixed token (`dev-token`, scope `mcp:read`) checked by
`StaticTokenVerifier`. The principal reaches fastmcp tools through the `mcp` SDK's
`get_access_token()`, which fastmcp also reads.
"""

from __future__ import annotations

import os

import uvicorn
from fastmcp import FastMCP
from mcp.server.auth.middleware.auth_context import get_access_token
from starlette.types import ASGIApp

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier


def build_app(public_url: str) -> ASGIApp:
    server = FastMCP("fastmcp-auth-demo")

    @server.tool
    def whoami() -> str:
        """Who the access token says you are."""
        token = get_access_token()
        return token.subject or "anonymous" if token else "anonymous"

    resource = f"{public_url}/mcp"
    return AuthMiddleware(
        server.http_app(path="/mcp"),
        verifier=StaticTokenVerifier({"dev-token": {"subject": "dev", "scopes": ["mcp:read"]}}, resource=resource),
        resource=resource,
        authorization_servers=["https://login.example.com"],
        required_scopes=["mcp:read"],
    )


PORT = int(os.environ.get("PORT", "8000"))
app = build_app(f"http://127.0.0.1:{PORT}")

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT)

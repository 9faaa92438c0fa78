"""Raw MCP exchanges on the wire (httpx2), for asserting on statuses and headers the SDK client hides."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import Principal, set_principal

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


async def call_tool(
    client: httpx2.AsyncClient,
    url: str,
    name: str,
    arguments: dict[str, Any] | None = None,
    *,
    request_id: int | str = 1,
    headers: dict[str, str] | dict[str, bytes] | None = None,
) -> httpx2.Response:
    """A modern-era (stateless) `tools/call`, answered as JSON or SSE."""
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments or {}, "_meta": _META},
    }
    sent: dict[str, str | bytes] = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
        **(headers or {}),
    }
    raw = {key.encode(): value if isinstance(value, bytes) else value.encode() for key, value in sent.items()}
    return await client.post(url, content=orjson.dumps(body), headers=raw)


def error_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error object of a refusal."""
    assert response.headers["content-type"] == "application/json"
    body = orjson.loads(response.content)
    assert body["jsonrpc"] == "2.0"
    return dict(body["error"]) | {"id": body["id"]}


class SubjectFromHeader:
    """Stands in for the auth middleware (a separate package): the principal is whatever `X-Test-Subject`
    says. Tests need distinct authenticated callers, not token verification."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"x-test-subject":
                    set_principal(scope, Principal(subject=value.decode("utf-8"), issuer="https://issuer.test"))
        await self.app(scope, receive, send)

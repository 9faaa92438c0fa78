"""Raw MCP exchanges on the wire (httpx2), for asserting on statuses and headers the SDK client hides."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import Principal, set_principal
from tests.support.requests import modern_body, modern_headers


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
    body = modern_body("tools/call", {"name": name, "arguments": arguments or {}}, request_id)
    sent: dict[str, str | bytes] = {**modern_headers("tools/call", name), **(headers or {})}
    raw = {key.encode(): value if isinstance(value, bytes) else value.encode() for key, value in sent.items()}
    return await client.post(url, content=body, headers=raw)


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

"""Raw JSON-RPC requests, for tests that speak to a server below the SDK client (to see the wire, or to lie).

    body, headers = modern_body("tools/call", {"name": "echo", "arguments": {}}), modern_headers("tools/call", "echo")
    await http.post(url, content=body, headers=headers)

A 2026-07-28 request carries its version and client capabilities in `params._meta` and mirrors its
method and name in `Mcp-Method`/`Mcp-Name` headers; a 2025-11-25 request opens a session with
`initialize` first (:func:`legacy_session` does the handshake over raw HTTP).
"""

from __future__ import annotations

from typing import Any

import httpx2
import orjson

__all__ = [
    "ACCEPT_BOTH",
    "ENVELOPE",
    "LEGACY",
    "MODERN",
    "initialize_body",
    "legacy_body",
    "legacy_headers",
    "legacy_post",
    "legacy_session",
    "modern_body",
    "modern_headers",
]

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ACCEPT_BOTH = "application/json, text/event-stream"
ENVELOPE: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
"""The `params._meta` keys every 2026-07-28 request carries."""


def modern_body(method: str, params: dict[str, Any] | None = None, request_id: object = 1) -> bytes:
    """A 2026-07-28 request body: `params` (not changed) with the envelope added to its `_meta`."""
    params = dict(params or {})
    params["_meta"] = {**params.get("_meta", {}), **ENVELOPE}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def modern_headers(method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    """The headers of a 2026-07-28 request (what the SDK client sends); `extra` adds or overrides."""
    headers = {
        "content-type": "application/json",
        "accept": ACCEPT_BOTH,
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
    }
    if name is not None:
        headers["mcp-name"] = name
    return {**headers, **extra}


def initialize_body(version: str = LEGACY, request_id: object = 1, client: str = "raw") -> bytes:
    """A 2025-11-25-style `initialize` body asking for `version` (any string: tests send hostile ones)."""
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": client, "version": "1"}}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params})


def legacy_headers(session: str | None = None, **extra: str) -> dict[str, str]:
    """The headers of a 2025-11-25 request in `session` (none: before or without one); `extra` adds or overrides."""
    headers = {"content-type": "application/json", "accept": ACCEPT_BOTH, "mcp-protocol-version": LEGACY}
    if session is not None:
        headers["mcp-session-id"] = session
    return {**headers, **extra}


def legacy_body(method: str, params: Any = None, request_id: object = 1) -> bytes:
    """A 2025-11-25 request body (no `params` member when `params` is None)."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return orjson.dumps(body)


async def legacy_session(http: httpx2.AsyncClient, url: str, **extra: str) -> str:
    """Open a 2025-11-25 session over raw HTTP (initialize, then initialized); returns its `Mcp-Session-Id`.

    `extra` headers go with both requests (an `authorization`, say); the client's own headers apply too.
    """
    headers = {"content-type": "application/json", "accept": ACCEPT_BOTH, **extra}
    response = await http.post(url, content=initialize_body(LEGACY, 0), headers=headers)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    done = await http.post(
        url,
        content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        headers=legacy_headers(session, **extra),
    )
    assert done.status_code == 202, done.text
    return session


async def legacy_post(
    http: httpx2.AsyncClient,
    url: str,
    session: str | None,
    method: str,
    request_id: int,
    params: Any = None,
    **extra: str,
) -> httpx2.Response:
    """Post one 2025-11-25 request in `session` (see :func:`legacy_session`); `extra` adds headers."""
    return await http.post(
        url, content=legacy_body(method, params, request_id), headers=legacy_headers(session, **extra)
    )

"""Raw JSON-RPC requests, for tests that speak to a server below the SDK client (to see the wire, or to lie).

    body, headers = modern_body("tools/call", {"name": "echo", "arguments": {}}), modern_headers("tools/call", "echo")
    await http.post(url, content=body, headers=headers)

A 2026-07-28 request carries its version and client capabilities in `params._meta` and mirrors its
method and name in `Mcp-Method`/`Mcp-Name` headers; a 2025-11-25 request opens a session with
`initialize` first (see :func:`initialize_body`).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "ACCEPT_BOTH",
    "ENVELOPE",
    "LEGACY",
    "MODERN",
    "initialize_body",
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

"""Open a sealed session again in this process: its sealed `initialize`, then `notifications/initialized`.

The requests go through the whole stack below the gateway's session layer, at the session's path,
with the client's own headers (so authentication sees the same principal, and the session is bound
to it exactly as the first one was), as the client's own requests would. The guard after
authentication checks the caller against the handle's owner before anything is opened.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.types import ASGIApp, Scope

from mcp_middleware.router.origins import UNKEYED, Fingerprints
from mcp_middleware.router.sessions import SEALED_SESSION_SCOPE_KEY, SealedSession, exchange

from .session_handles import SessionState

__all__ = ["reopen"]

logger = logging.getLogger("mcp_middleware.gateway.sessions")

_NOT_SENT = frozenset(
    {b"mcp-session-id", b"mcp-protocol-version", b"content-length", b"content-type", b"accept", b"last-event-id"}
)
_REOPEN_ID = "mcp-gateway-reopen"


async def reopen(app: ASGIApp, scope: Scope, state: SessionState, fingerprints: Fingerprints = UNKEYED) -> str | None:
    """The id of a new session at `app` for `state`'s client, or None when it cannot be opened."""
    kept = [(name, value) for name, value in scope["headers"] if name not in _NOT_SENT]
    base = {key: value for key, value in scope.items() if not key.startswith("mcp_middleware.")}
    # an aggregate's backend sessions go with it: continued there, not opened again (router/relay_adopt.py)
    ticket = SealedSession(
        owner=state.owner,
        replica=state.replica,
        backends=state.backends,
        replicas=state.replicas,
        origins=state.origins,  # (each continued only where its server still is)
        fingerprints=fingerprints,
    )

    async def ask(message: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], Any]:
        body = orjson.dumps(message)
        headers = [
            *kept,
            *extra,
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        child = {**base, "method": "POST", "headers": headers, "query_string": b"", SEALED_SESSION_SCOPE_KEY: ticket}
        answer = await exchange(app, child, body, message.get("id"))
        return answer.status, answer.headers, answer.message

    try:
        status, headers, answer = await ask(
            {"jsonrpc": "2.0", "id": _REOPEN_ID, "method": "initialize", "params": dict(state.initialize)}, []
        )
        session_id = headers.get(b"mcp-session-id")
        if status != 200 or session_id is None or not isinstance(answer, dict) or "result" not in answer:
            logger.info("sealed session at %s could not be re-opened (HTTP %s)", state.path, status)
            return None
        version = answer["result"].get("protocolVersion")
        extra = [(b"mcp-session-id", session_id)]
        if isinstance(version, str):
            extra.append((b"mcp-protocol-version", version.encode("latin-1")))
        status, _, _ = await ask({"jsonrpc": "2.0", "method": "notifications/initialized"}, extra)
        if status >= 300:
            return None
    except Exception as exc:  # the backend cannot take it now: the client is told its session is gone
        logger.warning("sealed session at %s could not be re-opened: %r", state.path, exc)
        return None
    return session_id.decode("latin-1")

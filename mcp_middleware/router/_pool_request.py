"""A request as the pool sees it: its body (to send again), its session, and its view only when needed.

Routing needs two headers (`Mcp-Session-Id`, `MCP-Protocol-Version`) and the body. When a middleware
in front has read the request already, the pool takes its view (and its response tap); when none has
(a bare `McpRouter` mount), the pool reads the body itself and parses it only when a replica fails
(is the request safe to send again? what is its id?): the common path costs no parse.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from mcp_middleware.core import ErrorCode, McpRequest, Rejection, send_error
from mcp_middleware.core.headers import RequestHeaders
from mcp_middleware.core.parsing import describe_exchange, parse_post
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE
from mcp_middleware.core.request import Era

__all__ = ["PoolCall"]

_MODERN = b"2026-07-28"


class PoolCall:
    """One request through the pool: `body`, `session_id` (legacy sessions only), and `request` (parsed on demand)."""

    __slots__ = ("_parsed", "_request", "body", "method", "modern", "scope", "session_id")

    def __init__(self, scope: Scope, body: bytes, request: McpRequest | None) -> None:
        self.scope = scope
        self.body = body
        self.method: str = scope["method"]
        self._request = request
        self._parsed = request is not None
        if request is not None:
            self.modern = request.era is Era.MODERN
            self.session_id = request.session_id
            return
        headers = dict(scope["headers"])  # built in C: cheaper than a loop over the headers in Python
        session_id = headers.get(b"mcp-session-id")
        self.modern = headers.get(b"mcp-protocol-version") == _MODERN
        self.session_id = session_id.decode("latin-1") if session_id is not None and not self.modern else None

    @classmethod
    async def read(cls, scope: Scope, receive: Receive, send: Send, request: McpRequest | None) -> PoolCall | None:
        """The call, its body read (or taken from the core's view, `request`); None when it is answered or the
        client left."""
        if scope["method"] != "POST":
            return cls(scope, b"", request)
        message = await receive()  # with a view, its body replayed: what follows is the client's stream
        if request is not None:
            return cls(scope, request.body, request)
        if message["type"] != "http.request":
            return None
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks, size = [body], len(body)
            while message.get("more_body", False):
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > DEFAULT_MAX_BODY_SIZE:
                    limit = DEFAULT_MAX_BODY_SIZE
                    await send_error(
                        send,
                        status=413,
                        code=ErrorCode.PAYLOAD_TOO_LARGE,
                        message=f"Request body exceeds {limit} bytes",
                    )
                    return None
                chunks.append(chunk)
            body = b"".join(chunks)
        return cls(scope, body, None)

    @property
    def request(self) -> McpRequest | None:
        """The request view (parsed now if no one has); None for a body that is no valid MCP request."""
        if not self._parsed:
            self._parsed = True
            headers = RequestHeaders(self.scope["headers"])
            if self.method == "POST":
                parsed = parse_post(self.body, headers)
                self._request = None if isinstance(parsed, Rejection) else parsed
            else:
                self._request = describe_exchange(self.method, headers)
        return self._request

    @property
    def id(self) -> str | int | None:
        request = self.request
        return request.id if request is not None else None

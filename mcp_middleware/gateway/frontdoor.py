"""The gateway's front door: Host and Origin allow-lists, CORS, and a body limit for every path.

A proxied backend never sees the client's `Host` (the proxy rewrites it), so its own
DNS-rebinding protection cannot work: the gateway checks `Host` and `Origin` once, in
front of every mount. Refusals are JSON-RPC errors like every other refusal of the
project: a `Host` not allowed gets 421, an `Origin` not allowed 403, a body over the
limit 413.

>>> from starlette.applications import Starlette
>>> app = FrontDoorMiddleware(Starlette(), allowed_hosts=["gateway.example.com"],
...                           allowed_origins=["https://app.example.com"])
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Awaitable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import Component, ErrorCode, Outcome, record_decision, send_error
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE

__all__ = ["FrontDoorMiddleware"]

_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, Mcp-Name, "
    "Last-Event-ID, traceparent, tracestate, baggage"
)
_EXPOSE_HEADERS = "Mcp-Session-Id, WWW-Authenticate, Retry-After, RateLimit, RateLimit-Policy"


_REMEMBERED_HOSTS = 1024
_REMEMBERED_HOST_LENGTH = 255


def _patterns(values: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """`*` matches anything within the value (`127.0.0.1:*` = any port, `*.example.com` = any subdomain)."""
    return tuple(re.compile(fnmatch.translate(value.lower())) for value in values)


class FrontDoorMiddleware:
    """Host/Origin allow-lists, CORS for the allowed origins, and a request body limit.

    - `allowed_hosts`: `Host` header patterns (`*` wildcards; `"*"` allows every host —
      only behind a proxy that checks it). Requests to `exempt_paths` (health checks from
      a load balancer that uses the pod IP) skip the Host check.
    - `allowed_origins`: browsers send `Origin`; a request carrying one not listed gets 403.
      Requests without `Origin` are not from a browser page and pass.
    - `cors`: answer preflights (`OPTIONS` with `Access-Control-Request-Method`) for allowed
      origins and add `Access-Control-Allow-Origin` and the exposed MCP headers to responses.
    - `max_body_size`: declared larger bodies are refused unread; streamed ones are cut off.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = ("127.0.0.1:*", "localhost:*", "[::1]:*"),
        allowed_origins: Iterable[str] = ("http://127.0.0.1:*", "http://localhost:*"),
        cors: bool = True,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        exempt_paths: Iterable[str] = ("/healthz", "/readyz"),
    ) -> None:
        if max_body_size <= 0:
            raise ValueError("max_body_size must be positive")
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)
        self._hosts = _patterns(self.allowed_hosts)
        self._any_host = "*" in self.allowed_hosts
        self._origins = _patterns(allowed_origins)
        self.cors = cors
        self.max_body_size = max_body_size
        self.exempt_paths = frozenset(exempt_paths)
        self._seen_hosts: dict[bytes, bool] = {}

    def host_allowed(self, host: str | None) -> bool:
        if self._any_host:
            return True
        return host is not None and self._host_allowed(host.encode("latin-1"))

    def _host_allowed(self, raw: bytes) -> bool:
        """`raw` (the header's bytes) judged once, remembered when short (client-chosen: a bounded table)."""
        allowed = self._seen_hosts.get(raw)
        if allowed is None:
            host = raw.decode("latin-1")
            allowed = any(p.fullmatch(host.lower()) for p in self._hosts)
            if len(raw) <= _REMEMBERED_HOST_LENGTH:
                if len(self._seen_hosts) >= _REMEMBERED_HOSTS:
                    self._seen_hosts.clear()
                self._seen_hosts[raw] = allowed
        return allowed

    def origin_allowed(self, origin: str) -> bool:
        return any(p.fullmatch(origin.lower()) for p in self._origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.mcp_direct(scope, receive, send)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What awaiting the middleware does, as an awaitable: a request that passes unchanged is the inner
        app's own (the gateway calls this, so that no frame of the door stays in the await chain)."""
        if scope["type"] not in ("http", "websocket"):
            return self.app(scope, receive, send)
        # One C-level pass over the headers; the first of a repeated name wins, as a lookup by name finds it.
        first = dict(reversed(scope["headers"]))
        if not self._any_host:
            host = first.get(b"host")
            allowed: bool | None = False
            if host is not None:
                allowed = self._seen_hosts.get(host)  # `_host_allowed`'s table first, without its call
                if allowed is None:
                    allowed = self._host_allowed(host)
            if not allowed and scope["path"] not in self.exempt_paths:
                record_decision(scope, Component.FRONTDOOR, Outcome.DENY, reason="host")
                return self._refuse(scope, send, 421, "Host not allowed")
        raw_origin = first.get(b"origin")
        origin = None
        cors = False
        if raw_origin is not None:  # from a browser's page
            origin = raw_origin.decode("latin-1")
            if not self.origin_allowed(origin):
                record_decision(scope, Component.FRONTDOOR, Outcome.DENY, reason="origin")
                return self._refuse(scope, send, 403, "Origin not allowed")
            cors = self.cors
        if scope["type"] == "websocket":
            return self.app(scope, receive, send)
        if cors and b"access-control-request-method" in first and scope["method"] == "OPTIONS":
            return self._preflight(send, origin or "")
        declared = first.get(b"content-length")
        # A length in ASCII digits (`bytes.isdigit`); `int()` refuses over 4,300 digits: that long is too large.
        if declared is not None and declared.isdigit():
            if (int(declared) if len(declared) <= 18 else sys.maxsize) > self.max_body_size:
                record_decision(scope, Component.FRONTDOOR, Outcome.DENY, reason="body_size")
                return self._too_large(send)
            if b"transfer-encoding" not in first and not cors:
                # The server frames the body by its declared length (HTTP/1.1 and HTTP/2 both refuse a body
                # longer than Content-Length), which is within the limit: nothing to count, no CORS to add.
                return self.app(scope, receive, send)
        return self._counted(scope, receive, send, origin if cors else None)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, cors_origin: str | None) -> None:
        """The body counted as it streams in (and the CORS headers added): the request needs the door's frame."""
        exchange = _Exchange(receive, send, self.max_body_size, cors_origin)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            if not exchange.over or exchange.started:
                raise  # apps often raise on the disconnect they were handed (Starlette: ClientDisconnect)
        if exchange.over and not exchange.started:
            record_decision(scope, Component.FRONTDOOR, Outcome.DENY, reason="body_size")
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send,
            status=413,
            code=ErrorCode.PAYLOAD_TOO_LARGE,
            message=f"Request body exceeds {self.max_body_size} bytes",
            data={"maxBytes": self.max_body_size},
        )

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message})
            return
        await send_error(send, status=status, code=ErrorCode.FORBIDDEN, message=message)

    async def _preflight(self, send: Send, origin: str) -> None:
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", _ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", _ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


class _Exchange:
    """Per request: a `receive` that cuts a streamed body off past the limit (the app sees a
    disconnect, and the client gets a 413 if nothing was sent yet), and a `send` adding CORS headers."""

    __slots__ = ("_cors", "_limit", "_receive", "_seen", "_send", "over", "started")

    def __init__(self, receive: Receive, send: Send, limit: int, origin: str | None) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._seen = 0
        self.over = False
        self.started = False
        self._cors = (
            [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", _EXPOSE_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
            if origin is not None
            else None
        )

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                self.over = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.over and not self.started:
            return  # the app's answer to the cut-off body (often a 500); the client gets the 413 instead
        if message["type"] == "http.response.start":
            self.started = True
            if self._cors is not None:
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(name, value) for name, value in self._cors if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
        await self._send(message)

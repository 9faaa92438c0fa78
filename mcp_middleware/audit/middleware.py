"""`AuditMiddleware`: one audit record per MCP operation, written by an :class:`~.trail.AuditTrail`.

An operation is a JSON-RPC request (it has an id and gets an answer). Notifications, a client's
responses to a server's requests, the legacy GET stream and DELETE are not operations and get
no record; neither does input the core refused before a method could be read (it has no method:
the access log and the span record it).

Place it where it sees the final outcome of each operation and every decision about it: outside
authentication and everything that refuses (in the gateway: just inside tracing, around the front
door and the router). A second `AuditMiddleware` further in (in a backend's stack, which the
aggregate also calls into) records nothing: one operation, one record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DECISIONS_SCOPE_KEY,
    DEFAULT_CONFIG,
    CoreConfig,
    RequestKind,
    ResponseTap,
    get_decisions,
    get_principal,
    read_request,
)

from .record import Operation, outcome_fields
from .trail import AuditTrail

__all__ = ["AUDITED_SCOPE_KEY", "AuditMiddleware", "ServerName"]

AUDITED_SCOPE_KEY: Final = "mcp_middleware.audit"
"""Set while an operation is being audited; copies of the scope further in carry it, so no second record."""

ServerName = Callable[[Scope], "str | None"]
"""Which backend served a request, asked once it ended (the gateway names configured servers only)."""


class AuditMiddleware:
    """Audit every MCP operation through `app` into `trail`.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.audit import AuditTrail, JsonlFileSink
    >>> server = MCPServer("demo")
    >>> trail = AuditTrail([JsonlFileSink("audit.jsonl")])
    >>> app = AuditMiddleware(server.streamable_http_app(), trail=trail)  # outside auth
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trail: AuditTrail,
        config: CoreConfig = DEFAULT_CONFIG,
        server_name: ServerName | None = None,
    ) -> None:
        self.app = app
        self.trail = trail
        self.config = config
        self.server_name = server_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or AUDITED_SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None or request.kind is not RequestKind.REQUEST:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        started = time.time()
        scope[AUDITED_SCOPE_KEY] = True
        scope.setdefault(DECISIONS_SCOPE_KEY, [])  # before any copy of the scope: decisions made in copies land here
        context = trace.get_current_span().get_span_context()
        tap, send = ResponseTap.attach(scope, send, request, max_bytes=self.config.max_inspect_bytes)
        exception: str | None = None
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:  # cancelled (the client left) or crashed: still one record
            exception = type(exc).__qualname__
            raise
        finally:
            del scope[AUDITED_SCOPE_KEY]
            decisions = get_decisions(scope)
            outcome = tap.outcome()
            self.trail.submit(
                Operation(
                    started=started,
                    request=request,
                    principal=get_principal(scope),
                    backend=self.server_name(scope) if self.server_name is not None else None,
                    path=scope["path"],
                    decisions=decisions,
                    outcome=outcome_fields(outcome, decisions, exception),
                    duration=outcome.duration,
                    trace_id=context.trace_id if context.is_valid else 0,
                    span_id=context.span_id if context.is_valid else 0,
                )
            )

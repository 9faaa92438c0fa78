"""What is known about one traced request, shared by its span, its metrics and its access line."""

from __future__ import annotations

import time

from opentelemetry.trace import INVALID_SPAN, Span, SpanContext, StatusCode
from starlette.types import Message, Scope, Send

from mcp_middleware.core import (
    Component,
    Decision,
    McpRequest,
    Outcome,
    ResponseTap,
    clip,
    get_decisions,
    get_principal,
    known_method,
)

from .http_semconv import HttpConventions
from .metrics import KnownNames, McpMetrics
from .semconv import ERROR_TYPE, RPC_RESPONSE_STATUS_CODE, outcome_error

__all__ = ["Exchange"]


class Exchange:
    """What is known about one traced request, shared by the span, the metrics and the log."""

    __slots__ = (
        "closer",
        "concluded",
        "duration",
        "error_code",
        "error_message",
        "error_type",
        "exception",
        "forward",
        "headers",
        "http",
        "link",
        "metrics",
        "name",
        "names",
        "own_span",
        "pending",
        "record_enduser",
        "refusal",
        "request",
        "scope",
        "span",
        "span_ended",
        "span_finished",
        "started",
        "status",
        "tap",
    )

    def __init__(self, scope: Scope, metrics: McpMetrics | None, names: KnownNames, record_enduser: bool) -> None:
        self.scope: Scope | None = scope  # dropped when the request ends: scope → exchange → scope is a cycle
        self.metrics = metrics
        self.names = names
        self.name: str | None = None
        self.record_enduser = record_enduser
        self.span_finished = False
        self.started = time.perf_counter()
        self.request: McpRequest | None = None
        self.tap: ResponseTap | None = None
        self.forward: Send | None = None
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.span: Span = INVALID_SPAN
        self.own_span = False
        self.span_ended = False
        self.http: HttpConventions | None = None
        self.closer: Send | None = None
        self.link: SpanContext | None = None
        self.pending: list[Decision] = []
        self.refusal: list[Message] = []
        self.exception: str | None = None
        self.concluded = False
        self.status: int | None = None
        self.duration = 0.0
        self.error_type: str | None = None
        self.error_code: int | None = None
        self.error_message: str | None = None

    async def capture_refusal(self, message: Message) -> None:
        """The core's `send` while it reads the request: a refusal is held until the span exists."""
        self.refusal.append(message)

    def on_decision(self, decision: Decision) -> None:
        if self.metrics is not None:
            self.metrics.record_decision(decision)
        if self.span is INVALID_SPAN:
            self.pending.append(decision)
        elif self.span.is_recording():
            _decorate(self.span, decision, self.record_enduser)

    def attach_span(self, span: Span, *, own: bool = True, http: HttpConventions | None = None) -> None:
        """The request's span: its own (`own`, ended here) or the host's (enriched, ended by the host)."""
        self.span = span
        self.own_span = own
        self.http = http
        if span.is_recording():
            if self.link is not None:
                span.add_link(self.link, {"mcp_middleware.link": "http.traceparent"})
            for decision in self.pending:
                _decorate(span, decision, self.record_enduser)
        self.pending = []

    async def send(self, message: Message) -> None:
        """Forward, then (on the last body chunk) finish the span before it ends."""
        assert self.forward is not None
        kind = message["type"]
        if kind == "http.response.start" and self.http is not None and self.span.is_recording():
            self.span.set_attributes(self.http.response(message["status"]))
        await self.forward(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            self.finish_span()
            if self.own_span:
                self.end_span()
        closer = self.closer
        if closer is not None:  # the host's span ends with this last (empty) chunk, after the outcome was set
            self.closer = None
            self.finish_span()
            await closer({"type": "http.response.body", "body": b"", "more_body": False})

    def holding_last(self, send: Send) -> Send:
        """`send` that holds back the end of the response, for a host span that ends with it.

        A host (FastAPI's telemetry, an ASGI instrumentation) ends its span when the last body chunk
        passes; the outcome is only known once the tap has seen that chunk. So the last chunk goes on
        with `more_body` set, and :meth:`send` ends the response with an empty chunk once the outcome
        is on the span.
        """

        async def below(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.closer = send
                message = {**message, "more_body": True}
            await send(message)

        return below

    def end_span(self) -> None:
        """End the span this exchange made (once); a host's span is the host's to end."""
        if self.own_span and not self.span_ended:
            self.span_ended = True
            self.finish_span()
            self.span.end()

    def release(self) -> None:
        """Drop what ties the exchange to the request (scope, tap and sends reference each other)."""
        self.scope = None
        self.tap = None
        self.forward = None
        self.closer = None

    def conclude(self) -> None:
        """Decide, once, the status, duration and error of the exchange."""
        if self.concluded:
            return
        self.concluded = True
        tap = self.tap
        if tap is not None:
            outcome = tap.outcome()
            self.status = outcome.status
            self.duration = outcome.duration
            self.error_type, self.error_code, self.error_message = outcome_error(outcome)
            if outcome.result is not None and self.request is not None:
                self.names.learn(self.request, outcome.result, outcome.is_tool_error)
        else:
            self.duration = time.perf_counter() - self.started
            for message in self.refusal:
                if message["type"] == "http.response.start":
                    self.status = message["status"]
            for decision in get_decisions(self.scope or {}):
                if decision.component == Component.CORE and decision.outcome == Outcome.REJECTED:
                    code = decision.attributes.get("code")
                    if isinstance(code, int):
                        self.error_type, self.error_code = str(code), code
        if self.error_type is None and self.exception is not None:
            self.error_type = self.exception

    def finish_span(self) -> None:
        """Put the outcome on the span (once, while it is still open)."""
        if self.span_finished:
            return
        self.span_finished = True
        self.conclude()
        span = self.span
        if not span.is_recording():
            return
        request = self.request
        target = request.name if request is not None else None
        # A name learned from this very answer (the first successful call): the span may carry it now.
        if target is not None and target in self.names and request is not None:
            method = known_method(request.method)
            if self.name == method:
                span.update_name(f"{method} {target}")
        if self.record_enduser and self.scope is not None:
            principal = get_principal(self.scope)
            enduser = principal.subject or principal.client_id
            if enduser is not None:
                span.set_attribute("enduser.id", clip(enduser))
        if self.error_type is not None:
            span.set_attribute(ERROR_TYPE, self.error_type)
            span.set_status(StatusCode.ERROR, self.error_message)
        if self.error_code is not None:
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, str(self.error_code))


_IDENTITY_KEYS = frozenset({"subject", "client_id", "user", "username", "email", "tenant"})
"""Decision attributes that say who the caller is: on spans only with `record_enduser=True`."""


def _decorate(span: Span, decision: Decision, identity: bool) -> None:
    """A decision as span attributes (the last one per component wins) and as an event (all kept)."""
    component, outcome, details = decision
    if not identity and not _IDENTITY_KEYS.isdisjoint(details):
        details = {key: value for key, value in details.items() if key not in _IDENTITY_KEYS}
    details = {key: clip(value) if type(value) is str else value for key, value in details.items()}
    prefix = f"mcp_middleware.{component}"
    span.set_attribute(f"{prefix}.outcome", outcome)
    for key, value in details.items():
        span.set_attribute(f"{prefix}.{key}", value)
    span.add_event(prefix, {"outcome": outcome, **details})

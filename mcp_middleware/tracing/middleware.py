"""`TracingMiddleware`: one OpenTelemetry server span per MCP request, metrics, and an access line.

The span comes from `opentelemetry-instrumentation-asgi`'s `OpenTelemetryMiddleware` (HTTP
attributes included, its `http.server.*` metrics on request; its per-message receive/send
spans are off, they would flood SSE streams). This middleware reads the request once through the
core before the span starts, so the span is born with its MCP name and attributes and the
parent chosen by the rule of :mod:`.context`; it then writes the span's context into
`params._meta` so that the wrapped `mcp` SDK server's own span becomes its child, records
every middleware's decision on the span, and sets `error.type` from the response tap
before the span ends (when the last body chunk is sent: for SSE, when the stream ends).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, get_default_span_details
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import INVALID_SPAN, NoOpTracerProvider, ProxyTracerProvider, Span, SpanContext, StatusCode
from opentelemetry.trace import TracerProvider as TracerProviderApi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import (
    DEFAULT_CONFIG,
    OTHER,
    BoundedValues,
    CoreConfig,
    Decision,
    McpRequest,
    ResponseTap,
    clip,
    get_decisions,
    get_principal,
    known_method,
    observe_decisions,
    read_request,
)

from .access_log import AccessLog
from .context import (
    context_from_headers,
    headers_with_carrier,
    meta_carrier,
    valid_parent,
    with_content_length,
    with_trace_context,
)
from .metrics import KnownNames, McpMetrics
from .semconv import ERROR_TYPE, RPC_RESPONSE_STATUS_CODE, outcome_error, request_attributes, span_name

__all__ = ["TracingMiddleware"]

_EXCHANGE_KEY = "mcp_middleware.tracing.exchange"
"""Scope key of the request being traced; an inner `TracingMiddleware` seeing it adds no second span."""


class _BodySwap:
    """`receive` that replaces the (replayed) request body with a rewritten one, then delegates."""

    __slots__ = ("_body", "_receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        body = self._body
        if body is None:
            return await self._receive()
        self._body = None
        message = await self._receive()  # the original body, replayed at once by the core
        while message["type"] == "http.request" and message.get("more_body", False):
            message = await self._receive()
        if message["type"] != "http.request":
            return message
        return {"type": "http.request", "body": body, "more_body": False}


class _Exchange:
    """What is known about one traced request, shared by the span, the metrics and the log."""

    __slots__ = (
        "concluded",
        "duration",
        "error_code",
        "error_message",
        "error_type",
        "exception",
        "forward",
        "headers",
        "link",
        "metrics",
        "name",
        "names",
        "pending",
        "record_enduser",
        "refusal",
        "request",
        "scope",
        "span",
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

    def attach_span(self, span: Span) -> None:
        self.span = span
        if span.is_recording():
            if self.link is not None:
                span.add_link(self.link, {"mcp_middleware.link": "http.traceparent"})
            for decision in self.pending:
                _decorate(span, decision, self.record_enduser)
        self.pending = []

    async def send(self, message: Message) -> None:
        """Forward, then (on the last body chunk) finish the span before the instrumentation ends it."""
        assert self.forward is not None
        await self.forward(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finish_span()

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
                if decision.component == "core" and decision.outcome == "rejected":
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


def _records(provider: TracerProviderApi) -> bool:
    """False for the API's stand-ins (nothing configured yet, or explicitly no-op)."""
    return not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)


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


class TracingMiddleware:
    """Trace, measure and log every MCP request with the OpenTelemetry MCP conventions.

    - One SERVER span per HTTP exchange, named `{mcp.method.name} {target}`, with
      `mcp.method.name`, `mcp.protocol.version`, `mcp.session.id`, `jsonrpc.request.id`,
      `gen_ai.tool.name`/`gen_ai.prompt.name`/`mcp.resource.uri`, `gen_ai.operation.name`,
      `error.type` and `rpc.response.status_code`, plus the HTTP attributes of the ASGI
      instrumentation; every middleware's decision as `mcp_middleware.*` attributes and events;
      who the caller is (`enduser.id`, and decision details such as `subject`) only with
      `record_enduser=True`.
    - Parent: `params._meta` trace context wins over the HTTP headers (see :mod:`.context`);
      the wrapped `mcp` SDK server's own span becomes a child of this one (`inject_trace_context`).
    - `mcp.server.operation.duration` and decision counters (:class:`~.metrics.McpMetrics`).
    - One JSON access line per request with `access_log=AccessLog()` (or `True`).

    The instrumentation's own `http.server.*` metrics are off unless `http_metrics=True`
    (they cost more per request than the span). Refused and malformed requests get a span
    too (with `error.type`). Providers default to the global ones; with the OpenTelemetry API
    alone (no SDK, or none configured) and no access log, the middleware only lets the core
    read the request.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> server = MCPServer("demo")
    >>> app = TracingMiddleware(server.streamable_http_app(), tracer_provider=TracerProvider())
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProviderApi | None = None,
        meter_provider: MeterProvider | None = None,
        config: CoreConfig = DEFAULT_CONFIG,
        inject_trace_context: bool = True,
        record_enduser: bool = False,
        uri_in_span_name: bool = False,
        access_log: AccessLog | bool = False,
        http_metrics: bool = False,
        max_metric_names: int = 500,
    ) -> None:
        self.app = app
        self.config = config
        self.inject_trace_context = inject_trace_context
        self.record_enduser = record_enduser
        self.uri_in_span_name = uri_in_span_name
        self.access_log = AccessLog() if access_log is True else (access_log or None)
        self.http_metrics = http_metrics
        self.metrics = McpMetrics(meter_provider, max_names=max_metric_names)
        self._hosts = BoundedValues(max_metric_names, max_length=255)
        self._tracer_provider = tracer_provider
        self._tracing = None if tracer_provider is None else _records(tracer_provider)
        self._instrumented = OpenTelemetryMiddleware(
            self._traced,
            default_span_details=self._span_details,
            tracer_provider=tracer_provider,
            # The instrumentation's http.server.* metrics cost more than the span itself; opt in.
            meter_provider=meter_provider if http_metrics else NoOpMeterProvider(),
            exclude_spans=["receive", "send"],
        )

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded: an SDK tracer provider is given or set globally (checked per request)."""
        fixed = self._tracing
        return fixed if fixed is not None else _records(trace.get_tracer_provider())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _EXCHANGE_KEY in scope:
            await self.app(scope, receive, send)
            return
        traced = self.tracing
        measured = self.metrics.active
        access_log = self.access_log if self.access_log is not None and self.access_log.enabled else None
        if not (traced or measured or access_log):
            # Nothing would be recorded: only the core's work remains (one parse for the stack).
            prepared = await read_request(scope, receive, send, self.config)
            if prepared is not None:
                await self.app(scope, prepared[1], send)
            return

        exchange = _Exchange(scope, self.metrics if measured else None, self.metrics.names, self.record_enduser)
        observe_decisions(scope, exchange.on_decision)
        prepared = await read_request(scope, receive, exchange.capture_refusal, self.config)
        if prepared is None:
            if not exchange.refusal:
                return  # the client left before sending its request
            exchange.forward = send
        else:
            request, receive = prepared
            del prepared  # not kept alive (and scanned by the collector) for the whole request
            if request is None:
                await self.app(scope, receive, send)
                return
            exchange.request = request
            exchange.tap, exchange.forward = ResponseTap.attach(
                scope, send, request, max_bytes=self.config.max_inspect_bytes
            )
        scope[_EXCHANGE_KEY] = exchange
        try:
            if traced or (measured and self.http_metrics):
                self._choose_parent(scope, exchange)
                if self.http_metrics:
                    scope["headers"] = self._bounded_host(scope["headers"])
                await self._instrumented(scope, receive, exchange.send)
            else:
                await self._untraced(scope, receive, exchange)
        finally:
            exchange.conclude()
            if measured and exchange.request is not None:
                self.metrics.record_operation(
                    exchange.request, exchange.duration, exchange.error_type, exchange.error_code
                )
            if access_log is not None:
                self._log(access_log, scope, exchange)
            exchange.scope = None
            del scope[_EXCHANGE_KEY]

    def _choose_parent(self, scope: Scope, exchange: _Exchange) -> None:
        """Apply the context rule: a valid `_meta.traceparent` wins; the header context becomes a link."""
        request = exchange.request
        carrier = meta_carrier(request.meta) if request is not None else None
        if carrier is None:
            return
        parent = valid_parent(carrier)
        if parent is None:
            return
        headers = exchange.headers
        from_headers = context_from_headers(headers)
        if from_headers is not None and (from_headers.trace_id, from_headers.span_id) != (
            parent.trace_id,
            parent.span_id,
        ):
            exchange.link = from_headers
        # Only the instrumentation sees these headers: `_traced` gives the app its own back.
        scope["headers"] = headers_with_carrier(headers, carrier)

    def _bounded_host(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The headers with `Host` bounded as a label: the instrumentation's `http.server.*` metrics
        (old conventions) label by `http.server_name`, the raw `Host` header. Only the instrumentation
        sees this copy; `_traced` gives the app its own headers back."""
        bounded = []
        for key, value in headers:
            if key == b"host":
                text = value.decode("latin-1")
                if self._hosts(text) is not text:
                    value = OTHER.encode()
            bounded.append((key, value))
        return bounded

    def _span_details(self, scope: Scope) -> tuple[str, dict[str, Any]]:
        exchange: _Exchange | None = scope.get(_EXCHANGE_KEY)
        request = exchange.request if exchange is not None else None
        if request is None:
            return get_default_span_details(dict(scope))
        name = span_name(request, uri_in_name=self.uri_in_span_name, target_allowed=self.metrics.names.for_span)
        if name is None:
            name = get_default_span_details(dict(scope))[0]
        assert exchange is not None
        exchange.name = name
        return name, dict(request_attributes(request))

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app as the instrumentation calls it: inside the request span, which is current."""
        exchange: _Exchange = scope[_EXCHANGE_KEY]
        span = trace.get_current_span()
        exchange.attach_span(span)
        scope["headers"] = exchange.headers
        request = exchange.request
        try:
            if request is None:  # a refusal by the core: now it can be answered inside the span
                for message in exchange.refusal:
                    await send(message)
                return
            if self.inject_trace_context and span.get_span_context().is_valid:
                body = with_trace_context(request, trace.set_span_in_context(span))
                if body is not None:
                    receive = _BodySwap(body, receive)
                    scope["headers"] = with_content_length(exchange.headers, len(body))
            await self.app(scope, receive, send)
        except Exception as exc:
            exchange.exception = type(exc).__qualname__
            raise
        finally:
            exchange.finish_span()  # if the response never ended (crash, client gone): before the span ends

    async def _untraced(self, scope: Scope, receive: Receive, exchange: _Exchange) -> None:
        """No spans to record (MCP metrics or the access log only): the exchange without the instrumentation."""
        assert exchange.forward is not None
        if exchange.request is None:
            for message in exchange.refusal:
                await exchange.forward(message)
            return
        try:
            await self.app(scope, receive, exchange.forward)
        except Exception as exc:
            exchange.exception = type(exc).__qualname__
            raise

    def _log(self, access_log: AccessLog, scope: Scope, exchange: _Exchange) -> None:
        context = exchange.span.get_span_context()
        entry = access_log.entry(
            request=exchange.request,
            http_method=scope["method"],
            path=scope["path"],
            status=exchange.status,
            error_code=exchange.error_code,
            error_type=exchange.error_type,
            duration=exchange.duration,
            principal=get_principal(scope),
            trace_id=context.trace_id,
            span_id=context.span_id,
            decisions=get_decisions(scope),
        )
        access_log.write(entry)

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

from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware, get_default_span_details
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
from opentelemetry.trace import TracerProvider as TracerProviderApi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    OTHER,
    BoundedValues,
    CoreConfig,
    ResponseTap,
    get_decisions,
    get_principal,
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
from .exchange import Exchange
from .metrics import McpMetrics
from .semconv import request_attributes, span_name

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


def _records(provider: TracerProviderApi) -> bool:
    """False for the API's stand-ins (nothing configured yet, or explicitly no-op)."""
    return not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)


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
            _, receive = await read_request(scope, receive, send, self.config)
            return await self.app(scope, receive, send) if receive is not ANSWERED else None

        exchange = Exchange(scope, self.metrics if measured else None, self.metrics.names, self.record_enduser)
        observe_decisions(scope, exchange.on_decision)
        request, receive = await read_request(scope, receive, exchange.capture_refusal, self.config)
        if receive is ANSWERED:
            if not exchange.refusal:
                return  # the client left before sending its request
            exchange.forward = send
        elif request is None:
            return await self.app(scope, receive, send)
        else:
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

    def _choose_parent(self, scope: Scope, exchange: Exchange) -> None:
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
        exchange: Exchange | None = scope.get(_EXCHANGE_KEY)
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
        exchange: Exchange = scope[_EXCHANGE_KEY]
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

    async def _untraced(self, scope: Scope, receive: Receive, exchange: Exchange) -> None:
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

    def _log(self, access_log: AccessLog, scope: Scope, exchange: Exchange) -> None:
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

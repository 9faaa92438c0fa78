"""`TracingMiddleware`: one OpenTelemetry server span per MCP request, metrics, and an access line.

The middleware makes the request's SERVER span itself (stable HTTP attributes, see
:mod:`.http_semconv`, plus the MCP ones). It reads the request once through the core before the
span starts, so the span is born with its MCP name and attributes and the parent chosen by the
rule of :mod:`.context`; it then writes the span's context into `params._meta` so that the wrapped
`mcp` SDK server's own span becomes its child, records every middleware's decision on the span,
and sets `error.type` from the response tap before the span ends (when the last body chunk is
sent: for SSE, when the stream ends).

When the host already made a server span for this HTTP request (FastAPI ≥ 0.165's own telemetry,
the FastAPI/Starlette/ASGI instrumentations: a local span is current when the request reaches the
middleware), the middleware makes no span of its own: it **enriches the host's span** with the MCP
attributes, decisions and outcome, and the `mcp` SDK's span becomes the host span's child.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind
from opentelemetry.trace import TracerProvider as TracerProviderApi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DECISIONS_SCOPE_KEY,
    DEFAULT_CONFIG,
    OTHER,
    BoundedValues,
    CoreConfig,
    ResponseTap,
    clip,
    get_decisions,
    get_principal,
    observe_decisions,
    read_request,
)
from mcp_middleware.core.direct import inner_app

from .access_log import AccessLog
from .context import (
    TRACE_KEYS,
    context_from_headers,
    meta_carrier,
    valid_parent,
    with_content_length,
    with_trace_context,
)
from .exchange import Exchange
from .http_semconv import HttpConventions
from .measured import measure
from .metrics import McpMetrics
from .providers import ProviderWatch, quiet_until
from .semconv import request_attributes, span_name

__all__ = ["TracingMiddleware"]

_EXCHANGE_KEY = "mcp_middleware.tracing.exchange"
"""Scope key of the request being traced; an inner `TracingMiddleware` seeing it adds no second span."""
_TRACE_HEADERS: Final = frozenset(key.encode() for key in TRACE_KEYS)
ServerName = Callable[[Scope], "str | None"]
"""Which backend served a request (the `mcp_middleware.server` label), asked once the request ended."""


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


_STAND_INS: Final = (ProxyTracerProvider, NoOpTracerProvider)


def _records(provider: TracerProviderApi) -> bool:
    """False for the API's stand-ins (nothing configured yet, or explicitly no-op)."""
    return not isinstance(provider, _STAND_INS)


class TracingMiddleware:
    """Trace, measure and log every MCP request with the OpenTelemetry MCP conventions.

    - One SERVER span per HTTP exchange, named `{mcp.method.name} {target}`, with
      `mcp.method.name`, `mcp.protocol.version`, `mcp.session.id`, `jsonrpc.request.id`,
      `gen_ai.tool.name`/`gen_ai.prompt.name`/`mcp.resource.uri`, `gen_ai.operation.name`,
      `error.type` and `rpc.response.status_code`, plus the stable HTTP attributes
      (`http.request.method`, `url.path`, `server.address`, `http.response.status_code`…;
      the old ones too with `OTEL_SEMCONV_STABILITY_OPT_IN=http/dup`); every middleware's
      decision as `mcp_middleware.*` attributes and events; who the caller is (`enduser.id`,
      and decision details such as `subject`) only with `record_enduser=True`.
    - Inside a host's server span (FastAPI's own telemetry, an ASGI instrumentation): no second
      span; the host's span gets the MCP attributes, decisions and outcome.
    - Parent: `params._meta` trace context wins over the HTTP headers (see :mod:`.context`);
      the wrapped `mcp` SDK server's own span becomes a child of this one (`inject_trace_context`).
    - `mcp.server.operation.duration` and decision counters (:class:`~.metrics.McpMetrics`),
      labelled by backend with `server_name`.
    - One JSON access line per request with `access_log=AccessLog()` (or `True`).

    `http.server.request.duration` is recorded only with `http_metrics=True`. Refused and
    malformed requests get a span too (with `error.type`). Providers default to the global ones;
    with the OpenTelemetry API alone (no SDK, or none configured) and no access log, the
    middleware only lets the core read the request.

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
        server_name: ServerName | None = None,
    ) -> None:
        from mcp_middleware import __version__

        self.app = app
        self._next = inner_app(app)  # (see mcp_middleware.core.direct)
        self.config = config
        self.inject_trace_context = inject_trace_context
        self.record_enduser = record_enduser
        self.uri_in_span_name = uri_in_span_name
        self.access_log = AccessLog() if access_log is True else (access_log or None)
        self.http_metrics = http_metrics
        self.server_name = server_name
        self.metrics = McpMetrics(meter_provider, max_names=max_metric_names, http=http_metrics)
        self.http = HttpConventions()
        self._paths = BoundedValues(max_metric_names, max_length=128)
        self._tracer_provider = tracer_provider
        self._tracing = ProviderWatch(trace.get_tracer_provider, _records, tracer_provider)
        self._quiet_until = 0.0
        """Until when (`time.monotonic()`) nothing is recorded without asking: both provider watches would say
        False without asking the API (see `quiet_until`), and there is no access log. One clock read a request."""
        self._measured_until = 0.0
        """Until when (`time.monotonic()`) `mcp_direct` measures without asking the provider watches: the tracing
        watch would say False without asking the API (`ProviderWatch.quiet_until`) and the metrics watch True (it
        stays True once a provider records: `ProviderWatch.records_until`). One clock read a request."""
        self._tracer = trace.get_tracer("mcp_middleware.tracing", __version__, tracer_provider)

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded: an SDK tracer provider is given or set globally (see :mod:`.providers`)."""
        return self._tracing()

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What awaiting the middleware does, as an awaitable (a layer in front may call this instead):
        a request that is only measured (no span, no access line) skips the `Exchange` (see :mod:`.measured`)."""
        if (
            monotonic() < self._measured_until  # (what the watches below said holds till then: no call to ask them)
            and self.access_log is None
            and not self.http_metrics
            and scope["type"] == "http"
            and _EXCHANGE_KEY not in scope
        ):
            return measure(self._next, scope, receive, send, self.metrics, self.config, self.server_name, _EXCHANGE_KEY)
        if (
            self.access_log is None
            and not self.http_metrics
            and scope["type"] == "http"
            and _EXCHANGE_KEY not in scope
            and not self._tracing()  # (`self.tracing`, without the property's frame)
            and self.metrics.active
        ):
            self._measured_until = min(self._tracing.quiet_until(), self.metrics._active.records_until())
            return measure(self._next, scope, receive, send, self.metrics, self.config, self.server_name, _EXCHANGE_KEY)
        return self(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if monotonic() < self._quiet_until:  # nothing recorded (the questions below would all say no)
            # (the core passes a scope that is not HTTP, or one an outer middleware read, on as it is)
            _, receive = await read_request(scope, receive, send, self.config)
            if receive is ANSWERED:
                return None
            return await self._next(scope, receive, send)  # (last: no jump after the await, a bytecode a request)
        if scope["type"] != "http" or _EXCHANGE_KEY in scope:
            await self._next(scope, receive, send)
            return
        traced = self._tracing()  # (`self.tracing`, without the property's frame)
        measured = self.metrics.active
        access_log = self.access_log if self.access_log is not None and self.access_log.enabled else None
        if not (traced or measured or self.access_log):  # no answer can change before a watch asks again
            self._quiet_until = quiet_until(self._tracing, self.metrics._active)
        if not (traced or measured or access_log):
            # Nothing would be recorded: only the core's work remains (one parse for the stack).
            _, receive = await read_request(scope, receive, send, self.config)
            return await self._next(scope, receive, send) if receive is not ANSWERED else None

        host: Span | None = None
        if traced:
            current = trace.get_current_span()
            context = current.get_span_context()
            if context.is_valid and not context.is_remote:
                host = current  # the host's own server span for this request: enrich it, add none
        exchange = Exchange(scope, self.metrics if measured else None, self.metrics.names, self.record_enduser)
        if traced:
            observe_decisions(scope, exchange.on_decision)  # the span gets them too
        elif measured:
            observe_decisions(scope, self.metrics.record_decision)  # no span to hold them for: one call less each
        else:
            scope.setdefault(DECISIONS_SCOPE_KEY, [])  # for the access line: copies of the scope share the list
        request, receive = await read_request(scope, receive, exchange.capture_refusal, self.config)
        if receive is ANSWERED:
            if not exchange.refusal:
                return  # the client left before sending its request
            exchange.forward = send
        elif request is None:
            return await self._next(scope, receive, send)
        else:
            exchange.request = request
            below = exchange.holding_last(send) if host is not None else send
            exchange.tap, exchange.forward = ResponseTap.attach(
                scope, below, request, max_bytes=self.config.max_inspect_bytes
            )
        scope[_EXCHANGE_KEY] = exchange
        try:
            if host is not None:
                await self._enriched(scope, receive, exchange, host)
            elif traced:
                await self._spanned(scope, receive, exchange)
            else:
                await self._untraced(scope, receive, exchange)
        finally:
            exchange.conclude()
            if measured:
                server = self.server_name(scope) if self.server_name is not None else None
                if exchange.request is not None:
                    self.metrics.record_operation(
                        exchange.request, exchange.duration, exchange.error_type, exchange.error_code, server
                    )
                if self.http_metrics:
                    self.metrics.record_http(scope, exchange.status, exchange.duration, server)
            if access_log is not None:
                self._log(access_log, scope, exchange)
            exchange.release()
            del scope[_EXCHANGE_KEY]

    async def _spanned(self, scope: Scope, receive: Receive, exchange: Exchange) -> None:
        """The request inside a SERVER span of its own."""
        name, attributes = self._span_details(scope, exchange)
        # Born with its attributes: a sampler sees them.
        span = self._tracer.start_span(
            name, context=self._parent(exchange), kind=SpanKind.SERVER, attributes=attributes
        )
        exchange.attach_span(span, own=True, http=self.http)
        try:
            with trace.use_span(span, end_on_exit=False):
                await self._traced(scope, receive, exchange.send)
        finally:
            exchange.end_span()

    async def _enriched(self, scope: Scope, receive: Receive, exchange: Exchange, span: Span) -> None:
        """The request inside the host's server span, which gets the MCP attributes and outcome."""
        request = exchange.request
        if request is not None and span.is_recording():
            span.set_attributes(request_attributes(request))
            carrier = meta_carrier(request.meta)
            parent = valid_parent(carrier) if carrier is not None else None
            if parent is not None:  # the host chose its parent from the headers; `_meta`'s becomes a link
                span.add_link(parent, {"mcp_middleware.link": "mcp.meta.traceparent"})
        exchange.attach_span(span, own=False, http=None)
        await self._traced(scope, receive, exchange.send)

    def _parent(self, exchange: Exchange) -> Context:
        """The context rule: a valid `_meta.traceparent` wins; a different header context becomes a link."""
        headers = exchange.headers
        request = exchange.request
        carrier = meta_carrier(request.meta) if request is not None else None
        parent = valid_parent(carrier) if carrier is not None else None
        if carrier is not None and parent is not None:
            from_headers = context_from_headers(headers)
            if from_headers is not None and (from_headers.trace_id, from_headers.span_id) != (
                parent.trace_id,
                parent.span_id,
            ):
                exchange.link = from_headers
            return propagate.extract(carrier, context=Context())
        found = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers if key in _TRACE_HEADERS}
        if not found:
            return Context()
        try:
            return propagate.extract(found, context=Context())
        except (ValueError, TypeError):  # a broken custom propagator must not fail the request
            return Context()

    def _span_details(self, scope: Scope, exchange: Exchange) -> tuple[str, dict[str, Any]]:
        attributes: dict[str, Any] = self.http.request(scope)
        request = exchange.request
        name = None
        if request is not None:
            name = span_name(request, uri_in_name=self.uri_in_span_name, target_allowed=self.metrics.names.for_span)
            attributes.update(request_attributes(request))
        if name is None:  # no MCP method (GET stream, DELETE, malformed): `METHOD /path`, the path bounded
            method = attributes["http.request.method"]
            method = "HTTP" if method == OTHER else method
            path = self._paths(clip(scope["path"], 128))
            name = method if path == OTHER else f"{method} {path}"
        exchange.name = name
        return name, attributes

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app inside the request's span, which is current."""
        exchange: Exchange = scope[_EXCHANGE_KEY]
        span = exchange.span
        request = exchange.request
        try:
            if request is None:  # a refusal by the core: answered now, inside the span
                exchange.finish_span()  # the outcome is known; a host ends its span with the last byte
                for message in exchange.refusal:
                    await send(message)
                return
            if self.inject_trace_context and span.get_span_context().is_valid:
                body = with_trace_context(request, trace.set_span_in_context(span))
                if body is not None:
                    receive = _BodySwap(body, receive)
                    scope["headers"] = with_content_length(exchange.headers, len(body))
            await self._next(scope, receive, send)
        except Exception as exc:
            exchange.exception = type(exc).__qualname__
            raise
        finally:
            scope["headers"] = exchange.headers
            exchange.finish_span()  # if the response never ended (crash, client gone): before the span ends

    async def _untraced(self, scope: Scope, receive: Receive, exchange: Exchange) -> None:
        """No spans to record (MCP metrics or the access log only): the exchange without a span."""
        assert exchange.forward is not None
        if exchange.request is None:
            for message in exchange.refusal:
                await exchange.forward(message)
            return
        try:
            await self._next(scope, receive, exchange.forward)
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

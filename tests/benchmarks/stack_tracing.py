"""End-to-end stacks with tracing (`--apps bare,tracing_api,tracing_sdk`).

`tracing_api`: no provider configured (the OpenTelemetry API alone): the request is parsed, nothing
is recorded. `tracing_sdk`: SDK tracer provider with a batch span processor whose exporter drops
the spans (no network), SDK meter provider recording every instrument.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.types import ASGIApp

from mcp_middleware.tracing import TracingMiddleware

from .apps import Stack


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _with_sdk(app: ASGIApp) -> ASGIApp:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Dropping()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return TracingMiddleware(app, tracer_provider=tracer_provider, meter_provider=meter_provider)


STACKS = {
    "tracing_api": Stack(TracingMiddleware),
    "tracing_sdk": Stack(_with_sdk),
}

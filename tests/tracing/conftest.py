"""Fixtures for the tracing tests: real OpenTelemetry SDK providers with in-memory exporters, per test.

Each test gets its own `TracerProvider` and `MeterProvider`, passed to the middleware
explicitly, so no test sets the process-wide global providers (which can be set only
once) and none sees another's spans.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.shared._otel
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, Component, Outcome, read_request, record_decision
from tests.support.waiting import until

OURS = "mcp_middleware.tracing"
"""Instrumentation scope of the request spans (the ASGI instrumentation makes them for us)."""
SDK = "mcp-python-sdk"
"""Instrumentation scope of the `mcp` SDK's own spans (client and server)."""


@dataclass
class Spans:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def finished(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.exporter.get_finished_spans())

    def ours(self) -> list[ReadableSpan]:
        """The request spans of the middleware."""
        return [s for s in self.finished() if s.instrumentation_scope and s.instrumentation_scope.name == OURS]

    def sdk_servers(self) -> list[ReadableSpan]:
        """The `mcp` SDK server's own spans."""
        return [
            s
            for s in self.finished()
            if s.instrumentation_scope and s.instrumentation_scope.name == SDK and s.kind is SpanKind.SERVER
        ]

    async def named(self, name: str, *, scope: str = OURS) -> ReadableSpan:
        """The one finished span called `name` (waiting for it: the server ends a span just after
        its last byte left, so the client can be faster than the span)."""
        deadline = time.monotonic() + 5
        while True:
            found = [
                s
                for s in self.finished()
                if s.name == name and s.instrumentation_scope and s.instrumentation_scope.name == scope
            ]
            if found or time.monotonic() > deadline:
                break
            await anyio.sleep(0.01)
        [span] = found
        return span


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    """A fresh SDK tracer provider exporting to memory, also used by the `mcp` SDK in this process.

    The SDK takes its tracer (`mcp.shared._otel._tracer`) from the global provider when it is
    imported; instead of setting the once-only global, the test points that tracer at this
    test's provider, so the SDK's real client and server spans land in the same exporter.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(mcp.shared._otel, "_tracer", provider.get_tracer(SDK))
    yield Spans(provider, exporter)
    provider.shutdown()


@dataclass
class Metrics:
    provider: MeterProvider
    reader: InMemoryMetricReader

    def points(self, name: str) -> list[Any]:
        """Every data point of the instrument `name` collected now."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def metric(self, name: str) -> Any:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric
        raise AssertionError(f"no metric {name}")

    def counts(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        """Counter value by attribute set."""
        return {
            frozenset((p.attributes or {}).items()): p.value
            for p in self.points(name)
            if isinstance(p, NumberDataPoint)
        }

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        return [p for p in self.points(name) if isinstance(p, HistogramDataPoint)]


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield Metrics(provider, reader)
    provider.shutdown()


@pytest.fixture
def twins() -> Iterator[tuple[Metrics, Metrics]]:
    """Two meter providers with their readers, for twin middlewares given the same traffic."""
    made = []
    for _ in range(2):
        reader = InMemoryMetricReader()
        made.append(Metrics(MeterProvider(metric_readers=[reader]), reader))
    yield made[0], made[1]
    for metrics in made:
        metrics.provider.shutdown()


async def traced_ids(exporter: InMemorySpanExporter, at_least: int) -> list[str]:
    """The `jsonrpc.request.id` of every finished span, sorted, once `at_least` have ended (a span ends just after
    its response's last byte, which the client may have before: waited for)."""
    await until(lambda: len(exporter.get_finished_spans()) >= at_least, patience=10)
    return sorted(str((span.attributes or {}).get("jsonrpc.request.id")) for span in exporter.get_finished_spans())


class RecordingDecider:
    """Stands in for the project's other middlewares (auth, ratelimit, breaker, cache), which tracing
    must not import: it records the decisions they would record, through the same core hook, and can
    refuse like they do.
    """

    def __init__(
        self,
        app: ASGIApp,
        decisions: Sequence[tuple[Component, Outcome, dict[str, Any]]],
        *,
        refuse_with: tuple[int, int] | None = None,
    ) -> None:
        self.app = app
        self.decisions = decisions
        self.refuse_with = refuse_with

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request, receive = await read_request(scope, receive, send)
        if receive is ANSWERED:
            return
        if request is not None and request.method == "tools/call":
            for component, outcome, attributes in self.decisions:
                record_decision(scope, component, outcome, **attributes)
            if self.refuse_with is not None:
                from mcp_middleware.core import send_error

                status, code = self.refuse_with
                await send_error(send, status=status, code=code, message="Refused by test", request_id=request.id)
                return
        await self.app(scope, receive, send)

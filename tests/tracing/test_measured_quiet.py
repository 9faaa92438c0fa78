"""The measured-only direct entry asks its provider watches only when their answers could change.

`TracingMiddleware.mcp_direct` measures a request without a span while the tracing watch says no and the metrics
watch yes; it remembers until when those answers hold without asking (the tracing watch's next re-check; a
metrics provider that records stays) and reads one clock a request until then. The test runs the same traffic
through that shortcut and through the general path (a twin whose memory is wiped before every request) on a
clock of its own, with an SDK tracer provider set between two re-checks, and compares the answers, the requests
traced and the metrics exported.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import ProxyTracerProvider

from mcp_middleware.tracing import AccessLog, TracingMiddleware, providers
from mcp_middleware.tracing import middleware as tracing_middleware
from mcp_middleware.tracing.providers import ProviderWatch
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import until

from .conftest import Metrics, traced_ids
from .test_measured import exported
from .test_middleware_quiet import Clock

pytestmark = pytest.mark.anyio


def _measured(metrics: Metrics, current: list[Any]) -> tuple[TracingMiddleware, InMemorySpanExporter]:
    """A middleware that measures (an SDK meter provider) and traces once `current[0]` is the SDK tracer provider
    (the API's stand-in until the test sets it, as an app's start-up would set the global one late)."""
    app = TracingMiddleware(build_server().streamable_http_app(), meter_provider=metrics.provider)
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    app._tracing = ProviderWatch(lambda: current[0], tracing_middleware._records)
    app._tracer = sdk.get_tracer("mcp_middleware.tracing")
    current.append(sdk)
    return app, exporter


async def test_a_provider_set_late_is_noticed_when_the_general_path_notices_it(
    serve: Any, monkeypatch: pytest.MonkeyPatch, twins: tuple[Metrics, Metrics]
) -> None:
    clock = Clock(1000.0)
    monkeypatch.setattr(tracing_middleware, "monotonic", clock)
    monkeypatch.setattr(providers, "time", SimpleNamespace(monotonic=clock))
    current: dict[str, list[Any]] = {"shortcut": [ProxyTracerProvider()], "general": [ProxyTracerProvider()]}
    shortcut, shortcut_spans = _measured(twins[0], current["shortcut"])
    general, general_spans = _measured(twins[1], current["general"])
    served = {"shortcut": serve(shortcut.mcp_direct), "general": serve(general.mcp_direct)}
    answers: dict[str, list[tuple[int, bytes]]] = {"shortcut": [], "general": []}
    # (time, whether the SDK provider is set by then): set between two re-checks, noticed at the next one.
    timeline = [(1000.0, False), (1000.2, False), (1000.5, True), (1000.99, True), (1001.0, True), (1001.5, True)]
    async with httpx2.AsyncClient(timeout=10) as http:
        for n, (now, set_) in enumerate(timeline):
            clock.now = now
            for name in ("shortcut", "general"):
                if set_:
                    current[name][0] = current[name][1]
            general._measured_until = 0.0  # the general path: the watches asked on every request
            for name in ("shortcut", "general"):
                body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "m"}}, n)
                response = await http.post(
                    served[name].mcp_url, content=body, headers=modern_headers("tools/call", "echo")
                )
                answers[name].append((response.status_code, response.content))
    assert answers["shortcut"] == answers["general"]
    assert {status for status, _ in answers["shortcut"]} == {200}
    traced = {"shortcut": await traced_ids(shortcut_spans, 2), "general": await traced_ids(general_spans, 2)}
    assert traced["shortcut"] == traced["general"] == ["4", "5"]  # noticed at 1001.0, the watch's re-check
    await until(lambda: sum(p[1] for p in exported(twins[0])["duration"]) == len(timeline), patience=10)
    await until(lambda: sum(p[1] for p in exported(twins[1])["duration"]) == len(timeline), patience=10)
    assert exported(twins[0]) == exported(twins[1])  # every request measured alike, traced or not
    assert shortcut._measured_until == 1001.0  # (set by the last measured-only request; the watch records since)
    assert shortcut.tracing is True


def test_a_watch_that_records_stays_so_and_one_that_does_not_never_is_trusted_to() -> None:
    assert ProviderWatch(lambda: "x", lambda provider: True, "given").records_until() == float("inf")
    assert ProviderWatch(lambda: "x", lambda provider: False, "given").records_until() == float("-inf")
    unset = ProviderWatch(lambda: "stand-in", lambda provider: provider != "stand-in")
    assert unset.records_until() == float("-inf")  # (not asked yet)


def test_what_the_shortcut_does_not_remember_is_asked_every_time(twins: tuple[Metrics, Metrics]) -> None:
    """Only the watches' answers are remembered: an outer middleware's exchange, a scope that is not HTTP, an
    access log or HTTP metrics switched on later take `__call__` at once, as on the general path."""
    app, _ = _measured(twins[0], [ProxyTracerProvider()])
    scope = {"type": "http", "path": "/mcp", "headers": []}
    receive: Any = None
    send: Any = None

    def entered(scope: dict[str, Any]) -> str:
        awaitable: Any = app.mcp_direct(scope, receive, send)
        name: str = awaitable.cr_code.co_qualname
        awaitable.close()
        return name

    assert entered(scope) == "measure"
    assert app._measured_until > tracing_middleware.monotonic()  # remembered
    assert entered({**scope, "mcp_middleware.tracing.exchange": object()}) == "TracingMiddleware.__call__"
    assert entered({**scope, "type": "websocket"}) == "TracingMiddleware.__call__"
    app.access_log = AccessLog()
    assert entered(scope) == "TracingMiddleware.__call__"
    app.access_log = None
    app.http_metrics = True
    assert entered(scope) == "TracingMiddleware.__call__"
    app.http_metrics = False
    assert entered(scope) == "measure"

"""With nothing to record, `TracingMiddleware` reads one clock a request until a provider watch would ask again.

While no SDK provider records (the OpenTelemetry API alone) and there is no access log, each watch answers
False without asking the API until its next re-check (`providers.RECHECK_SECONDS`); the middleware remembers
the earliest of those times (`quiet_until`) and skips asking until then. These tests run the same traffic
through that shortcut and through the general path (a twin whose memory is wiped before every request) on
a clock of the test's own, and compare what each records, request by request.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

from mcp_middleware.tracing import TracingMiddleware, providers
from mcp_middleware.tracing import middleware as tracing_middleware
from mcp_middleware.tracing.providers import ProviderWatch, quiet_until
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _traced(current: list[Any]) -> tuple[TracingMiddleware, InMemorySpanExporter]:
    """A middleware whose tracer provider is whatever `current[0]` is (the API's stand-in until the test sets
    an SDK one, as an app's start-up would set the global one late); metrics stay off."""
    app = TracingMiddleware(build_server().streamable_http_app())
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    app._tracing = ProviderWatch(lambda: current[0], tracing_middleware._records)
    app._tracer = sdk.get_tracer("mcp_middleware.tracing")  # (spans only once the watch says the SDK records)
    app.metrics._active = ProviderWatch(lambda: "stand-in", lambda provider: False)
    current.append(sdk)
    return app, exporter


async def _call(http: httpx2.AsyncClient, url: str, request_id: int) -> tuple[int, bytes]:
    body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "quiet"}}, request_id)
    response = await http.post(url, content=body, headers=modern_headers("tools/call", "echo"))
    return response.status_code, response.content


async def test_a_provider_set_late_is_noticed_when_the_general_path_notices_it(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(1000.0)
    monkeypatch.setattr(tracing_middleware, "monotonic", clock)
    monkeypatch.setattr(providers, "time", SimpleNamespace(monotonic=clock))
    shortcut_provider: list[Any] = [ProxyTracerProvider()]
    general_provider: list[Any] = [ProxyTracerProvider()]
    shortcut, shortcut_spans = _traced(shortcut_provider)
    general, general_spans = _traced(general_provider)
    served = {"shortcut": serve(shortcut), "general": serve(general)}
    answers: dict[str, list[tuple[int, bytes]]] = {"shortcut": [], "general": []}
    # (time, whether the SDK provider is set by then): set between two re-checks, noticed at the next one.
    timeline = [(1000.0, False), (1000.2, False), (1000.5, True), (1000.99, True), (1001.0, True), (1001.5, True)]
    async with httpx2.AsyncClient(timeout=10) as http:
        for n, (now, set_) in enumerate(timeline):
            clock.now = now
            if set_:
                shortcut_provider[0] = shortcut_provider[1]
                general_provider[0] = general_provider[1]
            general._quiet_until = 0.0  # the general path: the watches asked on every request
            for name in ("shortcut", "general"):
                answers[name].append(await _call(http, served[name].mcp_url, n))
    assert answers["shortcut"] == answers["general"]
    assert {status for status, _ in answers["shortcut"]} == {200}
    # Which requests got a span (a span ends just after the response's last byte: waited for).
    traced = {}
    for name, exporter in (("shortcut", shortcut_spans), ("general", general_spans)):
        await until(lambda exporter=exporter: len(exporter.get_finished_spans()) >= 2, patience=10)
        traced[name] = sorted(span.attributes["jsonrpc.request.id"] for span in exporter.get_finished_spans())  # type: ignore[index]
    assert traced["shortcut"] == traced["general"] == ["4", "5"]  # noticed at 1001.0, the watch's re-check
    assert shortcut._quiet_until == 1001.0  # (set by the last quiet request; the watch records since)
    assert shortcut.tracing is True


async def test_given_providers_that_record_nothing_stay_quiet_and_answer_as_the_bare_server(serve: Any) -> None:
    app = TracingMiddleware(build_server().streamable_http_app(), tracer_provider=NoOpTracerProvider())
    app.metrics._active = ProviderWatch(lambda: "stand-in", lambda provider: False, "given")
    bare = serve(build_server().streamable_http_app())
    quiet = serve(app)
    async with httpx2.AsyncClient(timeout=10) as http:
        for n in range(3):
            assert await _call(http, quiet.mcp_url, n) == await _call(http, bare.mcp_url, n)
    assert app._quiet_until == math.inf  # fixed: nothing can start recording


def test_quiet_until_is_the_earliest_time_a_watch_could_say_yes() -> None:
    clock = Clock(50.0)
    stand_in = ProviderWatch(lambda: "stand-in", lambda provider: provider != "stand-in")
    assert stand_in.quiet_until() == 0.0  # never asked: ask now
    original = providers.time
    providers.time = SimpleNamespace(monotonic=clock)  # type: ignore[assignment]
    try:
        assert stand_in() is False
    finally:
        providers.time = original
    assert stand_in.quiet_until() == 50.0 + providers.RECHECK_SECONDS
    never = ProviderWatch(lambda: "x", lambda provider: False, "given")
    always = ProviderWatch(lambda: "x", lambda provider: True, "given")
    assert never.quiet_until() == math.inf and always.quiet_until() == -math.inf
    assert quiet_until(stand_in, never) == 51.0 and quiet_until(stand_in, always) == -math.inf

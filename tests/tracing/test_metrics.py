"""Metrics: `mcp.server.operation.duration` by method, tool and error type with the semconv buckets,
and counters fed by the middlewares' decisions; exposed to Prometheus at a configurable path."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import Component, Decision, ErrorCode, Outcome
from mcp_middleware.tracing import (
    DURATION_BUCKETS,
    McpMetrics,
    PrometheusMetrics,
    PrometheusMiddleware,
    TracingMiddleware,
)
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server
from tests.support.waiting import until

from .conftest import Metrics, RecordingDecider

pytestmark = pytest.mark.anyio

DURATION = "mcp.server.operation.duration"


def by_method_and_tool(metrics: Metrics) -> dict[tuple[Any, Any, Any], int]:
    return {
        (a.get("mcp.method.name"), a.get("gen_ai.tool.name"), a.get("error.type")): p.count
        for p in metrics.histogram(DURATION)
        for a in [dict(p.attributes or {})]
    }


@pytest.mark.parametrize("era", ERAS)
async def test_operation_duration_is_recorded_by_method_tool_and_error_type(
    serve: Any, metrics: Metrics, era: Era
) -> None:
    app = TracingMiddleware(build_server().streamable_http_app(), meter_provider=metrics.provider)
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "a"})
        await client.call_tool("echo", {"text": "b"})
        await client.call_tool("failing", {"reason": "x"})
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("missing", {})

    missing = ("prompts/get", None, str(raised.value.error.code))
    await until(lambda: missing in by_method_and_tool(metrics))
    counts = by_method_and_tool(metrics)
    assert counts[("tools/call", "echo", None)] == 2
    assert counts[("tools/call", "failing", "tool_error")] == 1
    assert counts[("prompts/get", None, str(raised.value.error.code))] == 1
    assert counts[("tools/list", None, None)] >= 1  # the client lists tools to validate results
    metric = metrics.metric(DURATION)
    assert metric.unit == "s"
    [echo] = [p for p in metrics.histogram(DURATION) if (p.attributes or {}).get("gen_ai.tool.name") == "echo"]
    assert tuple(echo.explicit_bounds) == DURATION_BUCKETS
    attributes = dict(echo.attributes or {})
    assert attributes["mcp.protocol.version"] == ("2026-07-28" if era == "modern" else "2025-11-25")
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert 0 < echo.sum < 5
    if era == "legacy":  # notifications are operations too (acknowledged with 202)
        assert counts[("notifications/initialized", None, None)] == 1


async def test_decisions_feed_the_counters(serve: Any, metrics: Metrics) -> None:
    # The other middlewares are stood in for by a decider recording what they would record.
    decisions: list[tuple[Component, Outcome, dict[str, Any]]] = [
        (Component.AUTH, Outcome.DENY, {"reason": "expired"}),
        (Component.RATELIMIT, Outcome.DENY, {"policy": "burst", "remaining": 0}),
        (Component.BREAKER, Outcome.OPEN, {"key": "backend", "state": "open", "retry_after_ms": 900}),
        (Component.CACHE, Outcome.STALE, {}),
        (Component.CACHE, Outcome.EVICT, {"count": 3}),
    ]
    decider = RecordingDecider(build_server().streamable_http_app(), decisions)
    served: Served = serve(TracingMiddleware(decider, meter_provider=metrics.provider))
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "a"})
        await client.call_tool("echo", {"text": "b"})

    assert metrics.counts("mcp.middleware.auth.failures") == {
        frozenset({("mcp_middleware.outcome", "deny"), ("mcp_middleware.reason", "expired")}): 2
    }
    assert metrics.counts("mcp.middleware.ratelimit.refusals") == {frozenset({("mcp_middleware.policy", "burst")}): 2}
    assert metrics.counts("mcp.middleware.breaker.refusals") == {frozenset({("mcp_middleware.state", "open")}): 2}
    assert metrics.counts("mcp.middleware.cache.lookups") == {frozenset({("mcp_middleware.outcome", "stale")}): 2}
    assert metrics.counts("mcp.middleware.cache.evictions") == {frozenset(): 6}
    every = metrics.counts("mcp.middleware.decisions")
    assert every[frozenset({("mcp_middleware.component", "cache"), ("mcp_middleware.outcome", "evict")})] == 2


async def test_core_refusals_are_counted_as_decisions(serve: Any, metrics: Metrics) -> None:
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), meter_provider=metrics.provider))
    async with httpx2.AsyncClient() as http:
        response = await http.post(served.mcp_url, content=b"{}", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    every = metrics.counts("mcp.middleware.decisions")
    assert every == {frozenset({("mcp_middleware.component", "core"), ("mcp_middleware.outcome", "rejected")}): 1}


def _tool_name_labels(reader: Any) -> set[str]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        str((p.attributes or {})["gen_ai.tool.name"])
        for m in data.resource_metrics[0].scope_metrics[0].metrics
        if m.name == DURATION
        for p in m.data.data_points
    }


def test_tool_names_are_labels_only_once_the_server_vouched_for_them() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mcp_middleware.core import Era as CoreEra
    from mcp_middleware.core import McpRequest, RequestKind

    def call(name: str) -> McpRequest:
        return McpRequest(
            RequestKind.REQUEST, CoreEra.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": name}
        )

    reader = InMemoryMetricReader()
    recorder = McpMetrics(MeterProvider(metric_readers=[reader]), max_names=3)
    for index in range(10):  # names a client typed: never labels of their own
        recorder.record_operation(call(f"t{index}"), 0.001, None, None)
    assert _tool_name_labels(reader) == {"_OTHER"}

    listing = McpRequest(RequestKind.REQUEST, CoreEra.MODERN, "2026-07-28", method="tools/list", id=2)
    tools = [{"name": "bad name!"}, *({"name": f"t{index}"} for index in range(10))]
    recorder.names.learn(listing, {"tools": tools})
    for index in range(10):
        recorder.record_operation(call(f"t{index}"), 0.001, None, None)
    assert _tool_name_labels(reader) == {"t0", "t1", "t2", "_OTHER"}  # listed, portable, within max_names

    recorder.record_decision(Decision(Component.AUTH, Outcome.ALLOW, {}))  # an allow is not a failure
    data = reader.get_metrics_data()
    assert data is not None
    assert not [
        m for m in data.resource_metrics[0].scope_metrics[0].metrics if m.name == "mcp.middleware.auth.failures"
    ]


def test_a_successful_call_teaches_its_name_and_a_tool_error_does_not() -> None:
    from mcp_middleware.core import Era as CoreEra
    from mcp_middleware.core import McpRequest, RequestKind
    from mcp_middleware.tracing.metrics import KnownNames

    names = KnownNames(10)

    def call(name: str) -> McpRequest:
        return McpRequest(
            RequestKind.REQUEST, CoreEra.LEGACY, "2025-11-25", method="tools/call", id=1, params={"name": name}
        )

    names.learn(call("nope"), {"content": [], "isError": True}, tool_error=True)  # the SDK's unknown-tool answer
    names.learn(call("refused"), None)  # a 401/429: no result at all
    names.learn(call("echo"), {"content": []})
    names.learn(call("x" * 65), {"content": []})  # not a short portable name
    assert "echo" in names and len(names) == 1
    assert names.label("nope") == "_OTHER" and names.label("echo") == "echo"


@pytest.mark.parametrize("era", ERAS)
async def test_prometheus_exposition_at_a_configurable_path(serve: Any, era: Era) -> None:
    exported = PrometheusMetrics()
    try:
        refusing = RecordingDecider(
            build_server().streamable_http_app(),
            [("ratelimit", "deny", {"policy": "burst"})],
            refuse_with=(429, ErrorCode.RATE_LIMITED),
        )
        app = PrometheusMiddleware(
            TracingMiddleware(refusing, meter_provider=exported.meter_provider),
            registry=exported.registry,
            path="/internal/metrics",
        )
        served: Served = serve(app)
        async with connect(served.mcp_url, era) as client:
            with pytest.raises(MCPError):
                await client.call_tool("echo", {"text": "a"})
        # Refused before the server answered: the name was never vouched for, so it is no label of its own.
        await until(lambda: b'gen_ai_tool_name="_OTHER"' in exported.render()[0])
        async with httpx2.AsyncClient() as http:
            scrape = await http.get(f"{served.base}/internal/metrics")
            wrong_method = await http.post(f"{served.base}/internal/metrics")
            elsewhere = await http.get(f"{served.base}/metrics")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        text = scrape.text
        assert "# TYPE mcp_server_operation_duration_seconds histogram" in text
        assert "mcp_server_operation_duration_seconds_bucket{" in text
        bucket = next(line for line in text.splitlines() if 'gen_ai_tool_name="_OTHER"' in line and 'le="0.01"' in line)
        assert 'mcp_method_name="tools/call"' in bucket and f'error_type="{int(ErrorCode.RATE_LIMITED)}"' in bucket
        assert "mcp_middleware_ratelimit_refusals_total{" in text and 'mcp_middleware_policy="burst"' in text
        assert wrong_method.status_code == 405
        assert elsewhere.status_code == 404  # not the configured path: passed through to the app
    finally:
        exported.shutdown()


@pytest.mark.parametrize("enabled", [False, True])
async def test_the_instrumentations_http_metrics_are_opt_in(serve: Any, metrics: Metrics, enabled: bool) -> None:
    app = TracingMiddleware(build_server().streamable_http_app(), meter_provider=metrics.provider, http_metrics=enabled)
    served: Served = serve(app)
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "a"})
    await until(lambda: ("tools/call", "echo", None) in by_method_and_tool(metrics))
    data = metrics.reader.get_metrics_data()
    names = {m.name for r in (data.resource_metrics if data else ()) for s in r.scope_metrics for m in s.metrics}
    assert any(name.startswith("http.server.") for name in names) is enabled


class _StateChange(NamedTuple):
    """Shaped like the breaker's own state change (tracing reads it by duck typing, never imports it)."""

    key: str
    previous: enum.Enum
    state: enum.Enum
    reason: str


class _State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def test_breaker_state_changes_are_counted_through_the_listener(metrics: Metrics) -> None:
    recorder = McpMetrics(metrics.provider)
    recorder.record_breaker_change(_StateChange("backend-a", _State.CLOSED, _State.OPEN, "consecutive_failures"))
    recorder.record_breaker_change(_StateChange("backend-a", _State.OPEN, _State.HALF_OPEN, "open_elapsed"))
    recorder.record_breaker_change(_StateChange("backend-a", _State.HALF_OPEN, _State.OPEN, "probe_failed"))
    counts = metrics.counts("mcp.middleware.breaker.transitions")
    into_open = [value for attributes, value in counts.items() if ("mcp_middleware.state", "open") in attributes]
    assert sorted(into_open) == [1, 1] and sum(counts.values()) == 3
    assert (
        frozenset(
            {
                ("mcp_middleware.breaker", "backend-a"),
                ("mcp_middleware.previous", "closed"),
                ("mcp_middleware.state", "open"),
                ("mcp_middleware.reason", "consecutive_failures"),
            }
        )
        in counts
    )

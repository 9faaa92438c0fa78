"""Client input reaches spans, metrics and the access log only bounded: known sets or `_OTHER`, clipped
text, session digests. Sent as raw HTTP to a real server, as an attacker would."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import orjson
import pytest

from mcp_middleware.core import session_digest
from mcp_middleware.tracing import ACCESS_LOGGER, AccessLog, TracingMiddleware
from tests.conftest import Served, connect
from tests.servers import build_server
from tests.support.requests import initialize_body, modern_body, modern_headers
from tests.support.waiting import until

from .conftest import Metrics, Spans

pytestmark = pytest.mark.anyio

DURATION = "mcp.server.operation.duration"
LEGACY = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
HUGE = "v" * 100_000


async def test_a_huge_legacy_version_is_no_label_and_no_attribute_of_its_size(
    serve: Any, spans: Spans, metrics: Metrics
) -> None:
    """The reproduction of the review: `params.protocolVersion` of a legacy initialize became a label."""
    app = TracingMiddleware(
        build_server().streamable_http_app(), tracer_provider=spans.provider, meter_provider=metrics.provider
    )
    served: Served = serve(app)
    async with httpx2.AsyncClient() as http:
        for index in range(20):
            await http.post(served.mcp_url, content=initialize_body(f"{HUGE}{index}", index), headers=LEGACY)
    await until(lambda: sum(p.count for p in metrics.histogram(DURATION)) == 20)
    versions = {(p.attributes or {})["mcp.protocol.version"] for p in metrics.histogram(DURATION)}
    assert versions == {"_OTHER"}
    for span in spans.ours():
        assert len(str((span.attributes or {})["mcp.protocol.version"])) <= 256
        assert len(span.name) <= 100


async def test_hostile_methods_and_names_make_no_span_names_or_labels_of_their_own(
    serve: Any, spans: Spans, metrics: Metrics
) -> None:
    app = TracingMiddleware(
        build_server().streamable_http_app(),
        tracer_provider=spans.provider,
        meter_provider=metrics.provider,
        max_metric_names=5,
    )
    served: Served = serve(app)
    hostile = ["x" * 5000, "a\x00b", "\u202eevil", "name with spaces", "ünïcödé", *(f"tool{i}" for i in range(20))]
    async with httpx2.AsyncClient() as http:
        for index, name in enumerate(hostile):
            # Legacy era: no routing header has to agree, so any name and method reach the view.
            call = {"jsonrpc": "2.0", "id": index, "method": "tools/call", "params": {"name": name}}
            await http.post(served.mcp_url, content=orjson.dumps(call), headers=LEGACY)
            await http.post(served.mcp_url, content=orjson.dumps({**call, "method": f"custom/{name}"}), headers=LEGACY)
            if name.isascii() and name.isprintable():  # and the modern era, where the header must agree
                headers = modern_headers("tools/call", name)
                body = modern_body("tools/call", {"name": name, "arguments": {}}, index)
                await http.post(served.mcp_url, content=body, headers=headers)
    await until(lambda: sum(p.count for p in metrics.histogram(DURATION)) >= len(hostile))
    labels = {
        ((p.attributes or {}).get("mcp.method.name"), (p.attributes or {}).get("gen_ai.tool.name"))
        for p in metrics.histogram(DURATION)
    }
    assert {method for method, _ in labels} <= {"tools/call", "_OTHER"}
    assert {tool for _, tool in labels} <= {None, "_OTHER"}  # no name was vouched for by the server
    names = {span.name for span in spans.ours()}
    assert all(len(name) <= len("tools/call ") + 64 for name in names)
    assert not [name for name in names if "custom/" in name or "\x00" in name or " with " in name]
    assert len(names) <= 2 + 5  # "tools/call", "_OTHER" and at most max_metric_names targets
    for span in spans.ours():
        assert all(len(v) <= 256 for v in (span.attributes or {}).values() if isinstance(v, str))


async def test_a_listed_tool_becomes_a_label_and_a_span_name(serve: Any, spans: Spans, metrics: Metrics) -> None:
    app = TracingMiddleware(
        build_server().streamable_http_app(), tracer_provider=spans.provider, meter_provider=metrics.provider
    )
    served: Served = serve(app)
    async with connect(served.mcp_url, "modern") as client:
        await client.list_tools()
        await client.call_tool("failing", {"reason": "listed, so known, although it fails"})
    await until(
        lambda: any((p.attributes or {}).get("gen_ai.tool.name") == "failing" for p in metrics.histogram(DURATION))
    )
    assert await spans.named("tools/call failing")


async def test_the_access_log_names_sessions_by_digest_and_clips_what_the_client_chose(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    app = TracingMiddleware(build_server().streamable_http_app(), access_log=AccessLog(log_arguments=True))
    served: Served = serve(app)
    async with httpx2.AsyncClient() as http:
        opened = await http.post(served.mcp_url, content=initialize_body("2025-11-25"), headers=LEGACY)
        session = opened.headers["mcp-session-id"]
        in_session = {**LEGACY, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        huge_call = {"name": "n" * 10_000, "arguments": {"text": "a" * 50_000}}
        body = orjson.dumps({"jsonrpc": "2.0", "id": "i" * 10_000, "method": "tools/call", "params": huge_call})
        await http.post(served.mcp_url, content=body, headers=in_session)
        await http.post(served.mcp_url, content=initialize_body(HUGE, 3), headers=LEGACY)
    records = lambda: [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]  # noqa: E731
    await until(lambda: len(records()) >= 3)
    text = "\n".join(records())
    assert session not in text and session[:12] not in text
    assert session_digest(session) in text
    lines = [orjson.loads(line) for line in records()]
    assert all(len(line) < 6000 for line in records())
    call = next(line for line in lines if line.get("mcp.method") == "tools/call")
    assert len(call["mcp.target"]) == 256 and call["mcp.target"].endswith("…")
    assert len(call["jsonrpc.id"]) == 256
    assert isinstance(call["mcp.arguments"], str) and len(call["mcp.arguments"]) <= 4096
    assert all(len(line["mcp.protocol_version"]) <= 256 for line in lines if "mcp.protocol_version" in line)


async def test_a_hostile_host_header_is_no_label_of_the_http_metrics(serve: Any, metrics: Metrics) -> None:
    app = TracingMiddleware(
        build_server().streamable_http_app(), meter_provider=metrics.provider, http_metrics=True, max_metric_names=3
    )
    served: Served = serve(app)
    async with httpx2.AsyncClient() as http:
        for index in range(12):
            headers = {**LEGACY, "host": f"attacker-{index}.example:80"}
            await http.post(served.mcp_url, content=initialize_body("2025-11-25", index), headers=headers)
    # Recorded as each request ends, just after its last byte: wait for all twelve.
    await until(lambda: sum(p.count for p in metrics.points("http.server.request.duration")) == 12)
    points = metrics.points("http.server.request.duration")
    hosts = {str((p.attributes or {}).get("server.address")) for p in points}
    assert hosts == {"attacker-0.example", "attacker-1.example", "attacker-2.example", "_OTHER"}
    assert sum(p.count for p in points) == 12


def test_the_operation_memo_keeps_no_client_text_and_forgets_no_name_learned_later() -> None:
    """`record_operation` remembers the set for raw request values only when they are known values: a
    flood of huge versions or methods keeps nothing of theirs (each would pin its text in memory), and a
    tool first recorded as `_OTHER` gets its own label once the server lists it."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mcp_middleware.core import Era, McpRequest, RequestKind
    from mcp_middleware.tracing import McpMetrics

    reader = InMemoryMetricReader()
    recorder = McpMetrics(MeterProvider(metric_readers=[reader]))

    def request(method: str, version: str, name: str | None = None) -> McpRequest:
        params = {"name": name} if name is not None else None
        return McpRequest(RequestKind.REQUEST, Era.MODERN, version, method=method, id=1, params=params)

    for index in range(50):
        recorder.record_operation(request("tools/list", f"{HUGE}{index}"), 0.001, None, None)
        recorder.record_operation(request(f"{HUGE}{index}", "2026-07-28"), 0.001, None, None)
    assert recorder._operation_memo == {}  # (private: what it holds is the point)
    for _ in range(3):
        recorder.record_operation(request("tools/call", "2026-07-28", "search"), 0.001, None, None)
    recorder.names.learn(request("tools/list", "2026-07-28"), {"tools": [{"name": "search"}]})
    recorder.record_operation(request("tools/call", "2026-07-28", "search"), 0.001, None, None)
    recorder.record_operation(request("tools/call", "2026-07-28", "search"), 0.001, None, None)
    assert len(recorder._operation_memo) == 1

    data = reader.get_metrics_data()
    assert data is not None
    counts: dict[tuple[object, object, object], int] = {}
    for point in data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points:
        attributes = dict(point.attributes or {})
        key = (attributes["mcp.method.name"], attributes["mcp.protocol.version"], attributes.get("gen_ai.tool.name"))
        counts[key] = point.count
    assert counts == {
        ("tools/list", "_OTHER", None): 50,
        ("_OTHER", "2026-07-28", None): 50,
        ("tools/call", "2026-07-28", "_OTHER"): 3,
        ("tools/call", "2026-07-28", "search"): 2,
    }

"""`app.add_middleware(TracingMiddleware, …)` in a FastAPI app: MCP traffic is traced, REST routes are untouched."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import fastapi
import httpx2
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from mcp_middleware.tracing import TracingMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import until

from .conftest import SDK, RecordingDecider, Spans

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_added_to_a_fastapi_app_it_traces_mcp_and_leaves_rest_routes_alone(
    serve: Any, spans: Spans, era: Era
) -> None:
    server = build_server()
    mcp_app = server.streamable_http_app()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/", mcp_app)
    app.add_middleware(TracingMiddleware, tracer_provider=spans.provider)
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{served.base}/health")).json() == {"status": "ok"}
    assert await spans.named("tools/call echo")
    assert not [s for s in spans.ours() if s.name.startswith("GET /health")]


# --- FastAPI >= 0.165 makes its own server span: the middleware enriches it instead of nesting one ---------


def _fastapi_app(spans: Spans, server: Any, *, decisions: bool = False) -> FastAPI:
    """A FastAPI app with its native telemetry on (spans to the test's provider), the MCP app mounted at `/`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    app = FastAPI(lifespan=lifespan, telemetry={"tracer_provider": spans.provider, "metrics": False, "logs": False})
    app.mount("/", server.streamable_http_app())
    if decisions:
        app.add_middleware(RecordingDecider, decisions=[("ratelimit", "allow", {"policy": "per-user"})])
    app.add_middleware(TracingMiddleware, tracer_provider=spans.provider)
    return app


def _in_trace(spans: Spans, trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans.finished() if s.context is not None and s.context.trace_id == trace_id]


async def _host_span(spans: Spans, **attributes: Any) -> ReadableSpan:
    """The FastAPI span whose attributes include `attributes` (waiting: it ends just after the last byte)."""

    def found() -> list[ReadableSpan]:
        return [
            s
            for s in spans.finished()
            if s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "fastapi"
            and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
        ]

    await until(lambda: bool(found()))
    [span] = found()
    return span


@pytest.mark.parametrize("era", ERAS)
async def test_in_fastapi_with_its_own_telemetry_the_host_span_is_enriched_and_no_third_span_is_made(
    serve: Any, spans: Spans, era: Era
) -> None:
    assert tuple(int(part) for part in fastapi.__version__.split(".")[:2]) >= (0, 165)
    server = build_server()
    served: Served = serve(_fastapi_app(spans, server, decisions=True))
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})

    host = await _host_span(spans, **{"mcp.method.name": "tools/call"})
    assert host.kind is SpanKind.SERVER
    attributes = dict(host.attributes or {})
    assert attributes["gen_ai.tool.name"] == "echo"
    assert attributes["http.response.status_code"] == 200  # FastAPI's own, stable attributes
    assert attributes["mcp_middleware.ratelimit.outcome"] == "allow"  # decisions land on the host's span
    assert [e.name for e in host.events] == ["mcp_middleware.ratelimit"]
    assert host.context is not None
    await until(lambda: len(_in_trace(spans, host.context.trace_id)) >= 2)  # type: ignore[union-attr]
    in_trace = _in_trace(spans, host.context.trace_id)
    assert not spans.ours(), "the middleware made a span of its own inside FastAPI's"
    sdk = [s for s in in_trace if s.instrumentation_scope is not None and s.instrumentation_scope.name == SDK]
    server_spans = [s for s in sdk if s.kind is SpanKind.SERVER]
    assert [s.name for s in server_spans] == ["tools/call echo"]
    assert server_spans[0].parent is not None and server_spans[0].parent.span_id == host.context.span_id
    assert {s.kind for s in in_trace} <= {SpanKind.SERVER}  # no INTERNAL child anywhere


async def test_in_fastapi_the_outcome_is_on_the_host_span_before_it_ends(serve: Any, spans: Spans) -> None:
    served: Served = serve(_fastapi_app(spans, build_server()))
    async with connect(served.mcp_url, "modern") as client:
        result = await client.call_tool("failing", {"reason": "test"})
    assert result.is_error
    host = await _host_span(spans, **{"gen_ai.tool.name": "failing"})
    assert dict(host.attributes or {})["error.type"] == "tool_error"
    assert host.status.status_code is StatusCode.ERROR

    async with httpx2.AsyncClient() as http:  # refused by the core: malformed JSON
        answer = await http.post(served.mcp_url, content=b"{not json", headers=modern_headers("tools/call", "echo"))
    assert answer.status_code == 400
    refused = await _host_span(spans, **{"rpc.response.status_code": "-32700"})
    assert dict(refused.attributes or {})["error.type"] == "-32700"
    assert dict(refused.attributes or {})["http.response.status_code"] == 400


async def test_inside_an_asgi_instrumentation_span_the_middleware_enriches_that_span(serve: Any, spans: Spans) -> None:
    """The same rule for `opentelemetry-instrumentation-asgi` (what FastAPIInstrumentor and Starlette's add)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    server = build_server()
    app = OpenTelemetryMiddleware(
        TracingMiddleware(server.streamable_http_app(), tracer_provider=spans.provider),
        tracer_provider=spans.provider,
        exclude_spans=["receive", "send"],
    )
    served: Served = serve(app)
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "hi"})

    def hosts() -> list[ReadableSpan]:
        return [
            s
            for s in spans.finished()
            if s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
            and (s.attributes or {}).get("mcp.method.name") == "tools/call"
        ]

    await until(lambda: bool(hosts()))
    [host] = hosts()
    assert host.kind is SpanKind.SERVER and dict(host.attributes or {})["gen_ai.tool.name"] == "echo"
    assert not spans.ours()


async def test_in_fastapi_a_meta_traceparent_becomes_a_link_of_the_host_span(serve: Any, spans: Spans) -> None:
    """The host chose its parent from the headers; the MCP message's own context is kept as a link."""
    served: Served = serve(_fastapi_app(spans, build_server()))
    meta_parent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    params = {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"traceparent": meta_parent}}
    async with httpx2.AsyncClient() as http:
        answer = await http.post(
            served.mcp_url, content=modern_body("tools/call", params), headers=modern_headers("tools/call", "echo")
        )
    assert answer.status_code == 200
    host = await _host_span(spans, **{"gen_ai.tool.name": "echo"})
    assert host.parent is None  # no traceparent header: the host started a trace, `_meta` did not reparent it
    [link] = host.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c",
        "00f067aa0ba902b7",
    )
    assert dict(link.attributes or {}) == {"mcp_middleware.link": "mcp.meta.traceparent"}

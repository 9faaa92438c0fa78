"""Request spans: one per MCP request, named and attributed by the MCP semantic conventions, in both eras,
with the wrapped SDK server's own span as its child in the same trace."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import orjson
import pytest
from mcp import MCPError
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ErrorCode, Principal, set_principal
from mcp_middleware.tracing import TracingMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import PROGRESS_INTERVAL, build_server

from .conftest import SDK, RecordingDecider, Spans

pytestmark = pytest.mark.anyio

VERSION = {"modern": "2026-07-28", "legacy": "2025-11-25"}


def http_status(attributes: dict[str, Any]) -> Any:
    """The HTTP status attribute, under its stable or its older name (the instrumentation's opt-in decides)."""
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


def traced(spans: Spans, app: ASGIApp | None = None, **options: Any) -> TracingMiddleware:
    return TracingMiddleware(
        app if app is not None else build_server().streamable_http_app(), tracer_provider=spans.provider, **options
    )


@pytest.mark.parametrize("era", ERAS)
async def test_a_tool_call_gets_one_span_named_and_attributed_by_the_mcp_conventions(
    serve: Any, spans: Spans, era: Era
) -> None:
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool("echo", {"text": "hi"})
    assert result.content[0].text == "hi"  # type: ignore[union-attr]

    span = await spans.named("tools/call echo")
    assert span.kind is SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["mcp.protocol.version"] == VERSION[era]
    assert attributes["gen_ai.tool.name"] == "echo"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert str(attributes["jsonrpc.request.id"]).isdigit()
    assert http_status(attributes) == 200
    assert "error.type" not in attributes and span.status.status_code is StatusCode.UNSET
    if era == "legacy":
        session = str(attributes["mcp.session.id"])
        assert session.startswith("sha256:") and len(session) == 23  # the minted session, named by its digest
        # The session's GET stream and its DELETE are spans too (the stream's ends when it closes).
        for name in ("GET /mcp", "DELETE /mcp"):
            exchange = await spans.named(name)
            assert (exchange.attributes or {})["mcp.session.id"] == session
            assert "mcp.method.name" not in (exchange.attributes or {})
    else:
        assert "mcp.session.id" not in attributes
    # Per-message receive/send spans are off: every span of ours is a request span.
    assert all(s.kind is SpanKind.SERVER and not s.name.endswith((" send", " receive")) for s in spans.ours())


@pytest.mark.parametrize("era", ERAS)
async def test_the_sdk_server_span_is_a_child_of_the_request_span_and_nothing_is_traced_twice(
    serve: Any, spans: Spans, era: Era
) -> None:
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
        await client.get_prompt("greet", {"name": "Ada"})

    for name in ("tools/call echo", "prompts/get greet"):
        ours = await spans.named(name)  # exactly one request span
        theirs = await spans.named(name, scope=SDK)  # exactly one SDK span (the client's is "MCP send …")
        assert ours.context is not None and theirs.context is not None and theirs.parent is not None
        assert theirs.context.trace_id == ours.context.trace_id
        assert theirs.parent.span_id == ours.context.span_id
        # And ours continues the client's trace: its parent is the SDK client's span, from `_meta`.
        [client_span] = [s for s in spans.finished() if s.name == f"MCP send {name}"]
        assert ours.parent is not None and client_span.context is not None
        assert ours.parent.span_id == client_span.context.span_id
    # Every SDK server span (initialize, notifications too) sits under one request span of ours.
    ours_ids = {s.context.span_id for s in spans.ours() if s.context is not None}
    assert all(s.parent is not None and s.parent.span_id in ours_ids for s in spans.sdk_servers())


@pytest.mark.parametrize("era", ERAS)
async def test_without_injection_the_sdk_span_is_not_a_child_of_the_request_span(
    serve: Any, spans: Spans, era: Era
) -> None:
    served: Served = serve(traced(spans, inject_trace_context=False))
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
    ours = await spans.named("tools/call echo")
    theirs = await spans.named("tools/call echo", scope=SDK)
    assert theirs.parent is not None and ours.context is not None
    assert theirs.parent.span_id != ours.context.span_id  # siblings under the client span


@pytest.mark.parametrize("era", ERAS)
async def test_prompts_and_resources_carry_their_name_and_uri(serve: Any, spans: Spans, era: Era) -> None:
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client:
        await client.get_prompt("greet", {"name": "Ada"})
        await client.read_resource("demo://greeting")
    prompt = await spans.named("prompts/get greet")
    assert (prompt.attributes or {})["gen_ai.prompt.name"] == "greet"
    assert "gen_ai.operation.name" not in (prompt.attributes or {})
    resource = await spans.named("resources/read")  # URIs stay out of span names by default (cardinality)
    assert (resource.attributes or {})["mcp.resource.uri"] == "demo://greeting"


async def test_the_resource_uri_can_be_put_in_the_span_name(serve: Any, spans: Spans) -> None:
    served: Served = serve(traced(spans, uri_in_span_name=True))
    async with connect(served.mcp_url, "modern") as client:
        await client.read_resource("demo://greeting")
    assert await spans.named("resources/read demo://greeting")


@pytest.mark.parametrize("era", ERAS)
async def test_a_tool_error_is_error_type_tool_error(serve: Any, spans: Spans, era: Era) -> None:
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool("failing", {"reason": "boom"})
    assert result.is_error
    span = await spans.named("tools/call failing")
    assert (span.attributes or {})["error.type"] == "tool_error"
    assert "rpc.response.status_code" not in (span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("era", ERAS)
async def test_a_json_rpc_error_is_error_type_and_status_code(serve: Any, spans: Spans, era: Era) -> None:
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("no-such-prompt", {})
    span = await spans.named("prompts/get no-such-prompt")
    code = str(raised.value.error.code)
    assert (span.attributes or {})["error.type"] == code
    assert (span.attributes or {})["rpc.response.status_code"] == code
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == raised.value.error.message


BAD_INPUT = [
    ({"content-type": "text/plain"}, b"{}", 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
    ({"content-type": "application/json"}, b"{not json", 400, -32700),
    ({"content-type": "application/json"}, b"[]", 400, -32600),
    ({"content-type": "application/json"}, b"x" * 5_000_000, 413, ErrorCode.PAYLOAD_TOO_LARGE),
]


@pytest.mark.parametrize(("headers", "body", "status", "code"), BAD_INPUT, ids=["415", "malformed", "batch", "413"])
async def test_refused_and_malformed_requests_get_a_span_with_error_type(
    serve: Any, spans: Spans, headers: dict[str, str], body: bytes, status: int, code: int
) -> None:
    served: Served = serve(traced(spans))
    accept = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    async with httpx2.AsyncClient() as http:
        response = await http.post(served.mcp_url, content=body, headers={**headers, **accept})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code  # the client's answer is the core's, untouched

    span = await spans.named("POST /mcp")  # no MCP method could be read
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == str(code)
    assert attributes["rpc.response.status_code"] == str(code)
    assert http_status(attributes) == status
    assert attributes["mcp_middleware.core.outcome"] == "rejected"
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("era", ERAS)
async def test_decisions_of_other_middlewares_land_on_the_span(serve: Any, spans: Spans, era: Era) -> None:
    decisions: list[tuple[str, str, dict[str, Any]]] = [
        ("auth", "allow", {"subject": "alice"}),
        ("ratelimit", "allow", {"policy": "per-user", "remaining": 4}),
        ("cache", "miss", {}),
        ("breaker", "closed", {"key": "backend"}),
    ]
    app = traced(spans, RecordingDecider(build_server().streamable_http_app(), decisions))
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
    span = await spans.named("tools/call echo")
    attributes = dict(span.attributes or {})
    assert attributes["mcp_middleware.auth.outcome"] == "allow"
    assert "mcp_middleware.auth.subject" not in attributes  # who the caller is: only with record_enduser
    assert attributes["mcp_middleware.ratelimit.outcome"] == "allow"
    assert attributes["mcp_middleware.ratelimit.remaining"] == 4
    assert attributes["mcp_middleware.ratelimit.policy"] == "per-user"
    assert attributes["mcp_middleware.cache.outcome"] == "miss"
    assert attributes["mcp_middleware.breaker.outcome"] == "closed"
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert ("mcp_middleware.ratelimit", {"outcome": "allow", "policy": "per-user", "remaining": 4}) in events
    assert [name for name, _ in events] == [
        "mcp_middleware.auth",
        "mcp_middleware.ratelimit",
        "mcp_middleware.cache",
        "mcp_middleware.breaker",
    ]


@pytest.mark.parametrize("era", ERAS)
async def test_a_refusal_by_another_middleware_is_on_the_span(serve: Any, spans: Spans, era: Era) -> None:
    decisions = [("ratelimit", "deny", {"policy": "burst", "retry_after_ms": 250})]
    refusing = RecordingDecider(
        build_server().streamable_http_app(), decisions, refuse_with=(429, ErrorCode.RATE_LIMITED)
    )
    served: Served = serve(traced(spans, refusing))
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("echo", {"text": "hi"})
    assert raised.value.error.code == ErrorCode.RATE_LIMITED
    span = await spans.named("tools/call echo")
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == str(int(ErrorCode.RATE_LIMITED))
    assert attributes["mcp_middleware.ratelimit.outcome"] == "deny"
    assert attributes["mcp_middleware.ratelimit.retry_after_ms"] == 250
    assert http_status(attributes) == 429
    assert not [s for s in spans.sdk_servers() if s.name == "tools/call echo"]  # the server never saw it


@pytest.mark.parametrize("era", ERAS)
async def test_an_sse_response_span_ends_when_the_stream_ends_and_progress_still_streams(
    serve: Any, spans: Spans, era: Era
) -> None:
    served: Served = serve(traced(spans))
    arrivals: list[int] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.time_ns())

    steps = 3
    async with connect(served.mcp_url, era) as client:
        started = time.time_ns()
        result = await client.call_tool("slow", {"steps": steps}, progress_callback=on_progress)
        returned = time.time_ns()
    assert result.content[0].text == f"done after {steps} steps"  # type: ignore[union-attr]
    assert len(arrivals) == steps
    # Progress arrived while the tool ran, not all at the end: the middleware holds nothing back.
    assert arrivals[-1] - arrivals[0] >= (steps - 1) * PROGRESS_INTERVAL * 1e9 * 0.8
    assert returned - arrivals[0] >= (steps - 1) * PROGRESS_INTERVAL * 1e9 * 0.8

    span = await spans.named("tools/call slow")
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time >= started
    assert span.end_time >= arrivals[-1]  # not ended when the stream started
    assert span.end_time - span.start_time >= steps * PROGRESS_INTERVAL * 1e9 * 0.8


async def test_nested_tracing_middlewares_make_one_span(serve: Any, spans: Spans) -> None:
    served: Served = serve(traced(spans, traced(spans)))
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "hi"})
    assert await spans.named("tools/call echo")  # one, not two


class _SetsPrincipal:
    """What an auth middleware does: leave the caller's principal in the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            set_principal(scope, Principal(subject="alice", client_id="cli", token="secret-token"))
        await self.app(scope, receive, send)


@pytest.mark.parametrize("enabled", [False, True])
async def test_the_principal_is_enduser_id_only_when_enabled(serve: Any, spans: Spans, enabled: bool) -> None:
    auth = RecordingDecider(build_server().streamable_http_app(), [("auth", "allow", {"subject": "alice"})])
    served: Served = serve(traced(spans, _SetsPrincipal(auth), record_enduser=enabled))
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "hi"})
    attributes = dict((await spans.named("tools/call echo")).attributes or {})
    assert attributes.get("enduser.id") == ("alice" if enabled else None)
    assert attributes.get("mcp_middleware.auth.subject") == ("alice" if enabled else None)
    assert "secret-token" not in repr(attributes)


async def _crashing(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    raise RuntimeError("the app fell over")


async def test_a_crashing_app_gives_error_type_the_exception_class(serve: Any, spans: Spans) -> None:
    served: Served = serve(traced(spans, _crashing))
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    async with httpx2.AsyncClient() as http:
        response = await http.post(served.mcp_url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 500
    span = await spans.named("tools/list")
    assert (span.attributes or {})["error.type"] == "RuntimeError"
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("era", ERAS)
async def test_without_the_sdks_own_span_each_request_has_exactly_one_server_span(
    serve: Any, spans: Spans, era: Era
) -> None:
    from mcp.server._otel import OpenTelemetryMiddleware as SdkSpans

    server = build_server()
    server.middleware[:] = [m for m in server.middleware if not isinstance(m, SdkSpans)]  # as docs/observability.md
    served: Served = serve(traced(spans, server.streamable_http_app()))
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
    ours = await spans.named("tools/call echo")
    servers = [s for s in spans.finished() if s.kind is SpanKind.SERVER and s.name == "tools/call echo"]
    assert servers == [ours]


@pytest.mark.parametrize("era", ERAS)
async def test_concurrent_requests_each_get_their_own_parent(serve: Any, spans: Spans, era: Era) -> None:
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client, anyio.create_task_group() as group:
        for index in range(12):
            group.start_soon(client.call_tool, "lookup", {"key": f"k{index}"})
    await anyio.lowlevel.checkpoint()
    for _ in range(500):  # the last spans end just after their responses left
        ours = {(s.attributes or {})["jsonrpc.request.id"]: s for s in spans.ours() if s.name == "tools/call lookup"}
        theirs = [s for s in spans.sdk_servers() if s.name == "tools/call lookup"]
        if len(ours) == len(theirs) == 12:
            break
        await anyio.sleep(0.01)
    assert len(ours) == len(theirs) == 12
    for server_span in theirs:  # each SDK span sits under the request span of the same JSON-RPC id
        parent = ours[(server_span.attributes or {})["jsonrpc.request.id"]]
        assert server_span.parent is not None and parent.context is not None
        assert server_span.parent.span_id == parent.context.span_id


@pytest.mark.parametrize("era", ERAS)
async def test_a_large_request_body_is_rewritten_whole(serve: Any, spans: Spans, era: Era) -> None:
    text = "é" * 200_000  # 400 KB of UTF-8 in many chunks: the rewritten body and its Content-Length agree
    served: Served = serve(traced(spans))
    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool("echo", {"text": text})
    assert result.content[0].text == text  # type: ignore[union-attr]
    theirs = await spans.named("tools/call echo", scope=SDK)
    ours = await spans.named("tools/call echo")
    assert theirs.parent is not None and ours.context is not None
    assert theirs.parent.span_id == ours.context.span_id

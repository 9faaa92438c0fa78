"""Trace context: `params._meta` wins over the HTTP headers; the header context is kept as a link;
the wrapped server's span is always a child of the request span."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from mcp_middleware.core import Era, McpRequest, RequestKind
from mcp_middleware.tracing import TracingMiddleware
from mcp_middleware.tracing.context import meta_carrier, with_trace_context
from tests.conftest import Served
from tests.servers import build_server

from .conftest import SDK, Spans

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
HEADER_TRACE = "0af7651916cd43dd8448eb211c80319c"
HEADER_PARENT = "b7ad6b7169203331"
META_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
META_PARENT = "00f067aa0ba902b7"


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


async def call_echo(url: str, *, headers: dict[str, str], meta: dict[str, str]) -> httpx2.Response:
    """A raw 2026-07-28 `tools/call`, so the test decides exactly which trace context travels where."""
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": "hi"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                **meta,
            },
        },
    }
    routing = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    async with httpx2.AsyncClient() as http:
        response = await http.post(url, content=orjson.dumps(body), headers={**routing, **headers})
    assert response.status_code == 200
    assert response.json()["result"]["content"][0]["text"] == "hi"
    return response


CASES = {
    "header only": ({"traceparent": traceparent(HEADER_TRACE, HEADER_PARENT)}, {}, (HEADER_TRACE, HEADER_PARENT)),
    "_meta only": ({}, {"traceparent": traceparent(META_TRACE, META_PARENT)}, (META_TRACE, META_PARENT)),
    "both: _meta wins": (
        {"traceparent": traceparent(HEADER_TRACE, HEADER_PARENT)},
        {"traceparent": traceparent(META_TRACE, META_PARENT)},
        (META_TRACE, META_PARENT),
    ),
    "invalid _meta: header": (
        {"traceparent": traceparent(HEADER_TRACE, HEADER_PARENT)},
        {"traceparent": "00-not-a-trace-01"},
        (HEADER_TRACE, HEADER_PARENT),
    ),
}


@pytest.mark.parametrize(("headers", "meta", "parent"), CASES.values(), ids=CASES.keys())
async def test_the_parent_follows_the_documented_rule(
    serve: Any, spans: Spans, headers: dict[str, str], meta: dict[str, str], parent: tuple[str, str]
) -> None:
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), tracer_provider=spans.provider))
    await call_echo(served.mcp_url, headers=headers, meta=meta)
    ours = await spans.named("tools/call echo")
    assert ours.parent is not None and ours.context is not None
    assert (f"{ours.parent.trace_id:032x}", f"{ours.parent.span_id:016x}") == parent
    assert ours.parent.is_remote
    # Whatever the client sent, the server's own span is ours's child.
    theirs = await spans.named("tools/call echo", scope=SDK)
    assert theirs.parent is not None and theirs.parent.span_id == ours.context.span_id
    assert theirs.context is not None and theirs.context.trace_id == ours.context.trace_id


async def test_when_meta_wins_the_header_context_becomes_a_link(serve: Any, spans: Spans) -> None:
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), tracer_provider=spans.provider))
    await call_echo(
        served.mcp_url,
        headers={"traceparent": traceparent(HEADER_TRACE, HEADER_PARENT)},
        meta={"traceparent": traceparent(META_TRACE, META_PARENT)},
    )
    ours = await spans.named("tools/call echo")
    [link] = ours.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (HEADER_TRACE, HEADER_PARENT)
    assert dict(link.attributes or {}) == {"mcp_middleware.link": "http.traceparent"}


async def test_meta_baggage_and_tracestate_travel_with_the_meta_traceparent(serve: Any, spans: Spans) -> None:
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), tracer_provider=spans.provider))
    await call_echo(
        served.mcp_url,
        headers={"tracestate": "header=1", "traceparent": traceparent(HEADER_TRACE, HEADER_PARENT)},
        meta={"traceparent": traceparent(META_TRACE, META_PARENT), "tracestate": "rojo=00f067aa0ba902b7"},
    )
    ours = await spans.named("tools/call echo")
    assert ours.context is not None and dict(ours.context.trace_state) == {"rojo": "00f067aa0ba902b7"}


def test_meta_carrier_takes_only_the_w3c_keys_and_needs_a_traceparent() -> None:
    assert meta_carrier(None) is None
    assert meta_carrier({"tracestate": "a=1"}) is None
    assert meta_carrier({"traceparent": 5}) is None
    meta = {"traceparent": "tp", "baggage": "k=v", "progressToken": 3, "io.modelcontextprotocol/x": 1}
    assert meta_carrier(meta) == {"traceparent": "tp", "baggage": "k=v"}


def test_rewriting_the_body_keeps_everything_but_the_trace_keys() -> None:
    tracer = TracerProvider().get_tracer("test")
    params: dict[str, Any] = {
        "name": "echo",
        "arguments": {"text": "é"},
        "_meta": {"progressToken": 1, "traceparent": "old"},
    }
    request = McpRequest(RequestKind.REQUEST, Era.LEGACY, "2025-11-25", method="tools/call", id="a", params=params)
    from opentelemetry import trace

    with tracer.start_as_current_span("x") as span:
        body = with_trace_context(request, trace.set_span_in_context(span))
    assert body is not None
    message: dict[str, Any] = orjson.loads(body)
    assert message["id"] == "a" and message["method"] == "tools/call"
    assert message["params"]["arguments"] == {"text": "é"}
    assert message["params"]["_meta"]["progressToken"] == 1
    assert message["params"]["_meta"]["traceparent"].split("-")[2] == f"{span.get_span_context().span_id:016x}"
    assert params["_meta"]["traceparent"] == "old"  # the request view is never modified

    notification = McpRequest(RequestKind.NOTIFICATION, Era.LEGACY, "2025-11-25", method="notifications/initialized")
    with tracer.start_as_current_span("x") as span:
        body = with_trace_context(notification, trace.set_span_in_context(span))
    assert body is not None and "id" not in orjson.loads(body)
    odd = request._replace(params={"name": "echo", "_meta": "not an object"})
    assert with_trace_context(odd, trace.set_span_in_context(span)) is None


_TRACER = TracerProvider().get_tracer("test")
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    params=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "_meta"), JSON_VALUES, max_size=5),
    meta=st.none() | st.dictionaries(st.sampled_from(["progressToken", "traceparent", "x/y", "baggage"]), JSON_SCALARS),
    request_id=st.integers(0, 2**31) | st.text(min_size=1, max_size=8),
)
def test_the_rewritten_body_differs_only_in_the_trace_keys(
    params: dict[str, Any], meta: dict[str, Any] | None, request_id: int | str
) -> None:
    from opentelemetry import trace

    full = {**params, "_meta": meta} if meta is not None else params
    request = McpRequest(RequestKind.REQUEST, Era.MODERN, MODERN, method="tools/call", id=request_id, params=full)
    with _TRACER.start_as_current_span("request") as span:
        body = with_trace_context(request, trace.set_span_in_context(span))
    assert body is not None
    message = orjson.loads(body)
    assert message["id"] == request_id and message["method"] == "tools/call" and message["jsonrpc"] == "2.0"
    rewritten = dict(message["params"])
    new_meta = rewritten.pop("_meta")
    assert rewritten == params
    kept = {k: v for k, v in (meta or {}).items() if k not in ("traceparent", "tracestate", "baggage")}
    assert {k: v for k, v in new_meta.items() if k not in ("traceparent", "tracestate", "baggage")} == kept
    context = span.get_span_context()
    assert new_meta["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")

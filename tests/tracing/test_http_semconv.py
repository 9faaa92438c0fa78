"""HTTP attributes of the request span: the stable conventions, and the old ones only with `http/dup`."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from opentelemetry.trace import SpanKind

from mcp_middleware.tracing import TracingMiddleware
from mcp_middleware.tracing.http_semconv import HttpConventions, duplicate_requested
from tests.conftest import Served, connect
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers

from .conftest import Spans

pytestmark = pytest.mark.anyio

OLD = {"http.method", "http.scheme", "http.target", "http.status_code", "http.flavor", "net.host.name", "net.peer.ip"}


async def test_the_span_carries_the_stable_http_attributes_and_none_of_the_old(
    serve: Any, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), tracer_provider=spans.provider))
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "hi"})
    span = await spans.named("tools/call echo")
    attributes = dict(span.attributes or {})
    port = int(served.base.rsplit(":", 1)[1])
    assert span.kind is SpanKind.SERVER
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.scheme"] == "http" and attributes["url.path"] == "/mcp"
    assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == port
    assert attributes["network.protocol.version"] == "1.1"
    assert attributes["client.address"] == "127.0.0.1" and isinstance(attributes["client.port"], int)
    assert attributes["http.response.status_code"] == 200
    assert "user_agent.original" in attributes
    assert not OLD & set(attributes)


async def test_http_dup_adds_the_old_attributes_beside_the_stable_ones(
    serve: Any, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "database, http/dup")
    served: Served = serve(TracingMiddleware(build_server().streamable_http_app(), tracer_provider=spans.provider))
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "hi"})
    attributes = dict((await spans.named("tools/call echo")).attributes or {})
    assert attributes["http.request.method"] == attributes["http.method"] == "POST"
    assert attributes["http.response.status_code"] == attributes["http.status_code"] == 200
    assert attributes["http.target"] == "/mcp" and attributes["net.host.name"] == "127.0.0.1"


def test_the_opt_in_is_read_like_the_instrumentations_read_it() -> None:
    assert duplicate_requested({"OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup"})
    assert not duplicate_requested({"OTEL_SEMCONV_STABILITY_OPT_IN": "http"})  # stable only: our default anyway
    assert not duplicate_requested({})


def test_hostile_request_values_are_clipped_and_unknown_methods_are_other() -> None:
    scope = {
        "method": "BREW",
        "scheme": "http",
        "path": "/mcp/" + "x" * 5000,
        "query_string": b"q=" + b"y" * 5000,
        "headers": [(b"host", b"h" * 5000 + b":99999999"), (b"user-agent", "ü".encode() * 3000)],
        "client": ("10.0.0.1", 4000),
    }
    attributes = HttpConventions(duplicate=False).request(scope)
    assert attributes["http.request.method"] == "_OTHER" and attributes["http.request.method_original"] == "BREW"
    assert all(len(value) <= 256 for value in attributes.values() if isinstance(value, str))
    assert attributes["server.port"] == 80  # not a port: the scheme's default
    v6 = HttpConventions(duplicate=False).request({**scope, "method": "POST", "headers": [(b"host", b"[::1]:8443")]})
    assert (v6["server.address"], v6["server.port"]) == ("::1", 8443)


async def test_a_malformed_request_span_is_named_by_method_and_a_bounded_path(serve: Any, spans: Spans) -> None:
    from mcp_middleware.core import CoreConfig

    app = TracingMiddleware(
        build_server().streamable_http_app(),
        tracer_provider=spans.provider,
        config=CoreConfig(paths=("/mcp", "/mcp/*")),
        max_metric_names=2,
    )
    served: Served = serve(app)
    async with httpx2.AsyncClient() as http:
        for index in range(5):
            await http.post(f"{served.base}/mcp/junk{index}", content=b"{", headers=modern_headers("tools/list"))
        await http.post(served.mcp_url, content=modern_body("tools/list"), headers=modern_headers("tools/list"))
    await spans.named("tools/list")
    names = sorted(s.name for s in spans.ours())
    assert names == ["POST", "POST", "POST", "POST /mcp/junk0", "POST /mcp/junk1", "tools/list"], names

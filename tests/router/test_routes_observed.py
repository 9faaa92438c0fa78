"""Routes seen from outside: the backend that served a call on the span and in the access line, and a
fallback that cannot get round the fallback's own authorization.

Same vendors as tests/router/test_routes.py. Real OpenTelemetry SDK (in-memory exporter), the
real access log, `AuthMiddleware` at the aggregate's door and in each vendor's stack.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.middleware import Middleware

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import ErrorCode
from mcp_middleware.router import InProcessBackend, McpRouter
from mcp_middleware.tracing import TracingMiddleware
from mcp_middleware.tracing.access_log import ACCESS_LOGGER
from tests.conftest import ERAS, Era, connect
from tests.router.test_routes import EVERY_PATH, ROUTES, Switchable, Vendor, breaker, served_by, text, vendor_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import held_within

pytestmark = pytest.mark.anyio

TOKENS = {"plain": ["mcp"], "b-search": ["mcp", "b:search"]}


async def test_the_serving_backend_is_on_the_span_and_in_the_access_line(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    router = McpRouter(routes=ROUTES)
    for name, vendor in vendors.items():
        router.mount(name, Switchable(vendor_server(vendor).streamable_http_app(), vendor), middleware=[breaker()])
    url = serve(TracingMiddleware(router, tracer_provider=provider, access_log=True)).mcp_url
    async with connect(url, "modern") as client:
        await client.list_tools()
        vendors["vendor_a"].down = True
        result = await client.call_tool("search", {"query": "traced"})
    assert text(result) == "vendor_b:traced"

    def call_spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name == "tools/call search"]

    assert await held_within(lambda: bool(call_spans()))
    attributes = dict(call_spans()[-1].attributes or {})
    assert attributes["mcp_middleware.router.server"] == "vendor_b"
    assert attributes["mcp_middleware.router.route"] == "search"
    assert attributes["mcp_middleware.router.fallback"] is True
    events = [dict(e.attributes or {}) for e in call_spans()[-1].events if e.name == "mcp_middleware.router"]
    assert [e["outcome"] for e in events] == ["routed", "fallback", "routed"]

    def access_lines() -> list[dict[str, Any]]:
        found = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
        return [line for line in found if line.get("mcp.target") == "search"]

    assert await held_within(lambda: bool(access_lines()))
    router_decisions = [d for d in access_lines()[-1]["decisions"] if d["component"] == "router"]
    assert router_decisions[1] == {
        "component": "router",
        "outcome": "fallback",
        "route": "search",
        "server": "vendor_a",
        "to": "vendor_b",
        "reason": "backend_error",
    }
    assert router_decisions[-1]["server"] == "vendor_b" and router_decisions[-1]["fallback"] is True


def guarded(vendors: dict[str, Vendor]) -> DecisionRecorder:
    """The vendors behind authentication at the aggregate's door and authorization in each one's stack."""
    verifier = StaticTokenVerifier(TOKENS)

    def auth(resource: str, scopes: dict[str, list[str]]) -> Middleware:
        return Middleware(
            AuthMiddleware,
            verifier=verifier,
            resource=resource,
            required_scopes=["mcp"],
            scopes=scopes,
            require_audience=False,
            config=EVERY_PATH,
        )

    router = McpRouter(routes=ROUTES, aggregate_middleware=[auth("http://127.0.0.1/mcp", {})])
    for name, vendor in vendors.items():
        scopes = {"tools/call:search": ["b:search"]} if name == "vendor_b" else {}
        app = Switchable(vendor_server(vendor).streamable_http_app(), vendor)
        router.mount(
            name,
            InProcessBackend(app),
            middleware=[auth(f"http://127.0.0.1/mcp/{name}", scopes), breaker()],
        )
    return DecisionRecorder(router)


@contextlib.asynccontextmanager
async def client_with(url: str, era: Era, token: str) -> AsyncIterator[Any]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        yield client


async def test_a_fallback_does_not_get_round_the_fallbacks_own_scopes(serve: Any) -> None:
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    recorder = guarded(vendors)
    url = serve(recorder).mcp_url
    body = modern_body("tools/call", {"name": "search", "arguments": {"query": "x"}})
    async with httpx2.AsyncClient(timeout=30) as http:
        listed = await http.post(  # the catalog learns that `search` is read-only at both vendors
            url, content=modern_body("tools/list"), headers=modern_headers("tools/list", authorization="Bearer plain")
        )
        assert listed.status_code == 200
        vendors["vendor_a"].down = True
        answer = await http.post(
            url, content=body, headers=modern_headers("tools/call", "search", authorization="Bearer plain")
        )
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == ErrorCode.FORBIDDEN and answer.json()["id"] == 1
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert "b:search" in answer.headers["www-authenticate"]
    assert vendors["vendor_b"].ran("search") == 0
    outcomes = [(d.component, d.outcome) for d in recorder.decisions if d.component in ("router", "auth")]
    assert ("router", "fallback") in outcomes and outcomes[-1] == ("auth", "deny")


@pytest.mark.parametrize("era", ERAS)
async def test_a_caller_the_fallback_allows_is_served_there(era: Era, serve: Any) -> None:
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    url = serve(guarded(vendors)).mcp_url
    async with client_with(url, era, "b-search") as client:
        await client.list_tools()
        vendors["vendor_a"].down = True
        result = await client.call_tool("search", {"query": "allowed"})
    assert text(result) == "vendor_b:allowed" and served_by(result)["server"] == "vendor_b"
    async with client_with(url, era, "plain") as client:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK client's own error for a 403
            await client.call_tool("search", {"query": "refused"})
    assert vendors["vendor_b"].ran("search") == 1


async def test_a_refusal_after_the_stream_opened_is_its_last_event(serve: Any) -> None:
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    vendors["vendor_a"].hang.add("search")  # legacy: its stream opens, then it times out (read-only: moves on)
    url = serve(guarded(vendors)).mcp_url
    async with client_with(url, "legacy", "plain") as client:
        await client.list_tools()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("search", {"query": "x"})
    assert refused.value.code == ErrorCode.FORBIDDEN  # vendor_b's own stack, said on the stream vendor_a opened
    assert vendors["vendor_b"].ran("search") == 0


def test_an_unused_server_is_fine(tmp_path: Any) -> None:
    # A route may name fewer servers than are mounted; the others are aggregated as usual.
    router = McpRouter(routes=ROUTES)
    for name in ("vendor_a", "vendor_b", "other"):
        router.mount(name, MCPServer(name).streamable_http_app())
    assert [route.name for route in router.aggregate.routes.routes] == ["search", "book", "brief", "claim_outage"]

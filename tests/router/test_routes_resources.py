"""Resource-prefix routes: `docs://` served by a primary backend, else by its fallback, listed once.

Two in-process `MCPServer` vendors both offer `docs://guide`; `vendor_a` also `docs://only_a`, and
each an unrouted `other://x`. The route names `vendor_a` the primary of `docs://`, `vendor_b` its
fallback; each vendor has its own stack (a breaker). A vendor is switched off (its app raises).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_middleware.core import JsonRpcCode
from mcp_middleware.router import ROUTER_META_KEY, InProcessBackend, McpRouter, Route
from mcp_middleware.router.held import OUTAGE_CODES
from mcp_middleware.tracing import TracingMiddleware
from mcp_middleware.tracing.access_log import ACCESS_LOGGER
from tests.conftest import ERAS, Era, connect
from tests.router.test_routes import Switchable, Vendor, breaker
from tests.support.decisions import DecisionRecorder
from tests.support.waiting import held_within

pytestmark = pytest.mark.anyio

DOCS = Route(resource_prefix="docs://", primary="vendor_a", fallback=("vendor_b",))


def vendor_server(vendor: Vendor) -> MCPServer:
    server = MCPServer(vendor.name)

    @server.resource("docs://guide")
    def guide() -> str:
        vendor.calls["guide"] = vendor.calls.get("guide", 0) + 1
        return f"guide from {vendor.name}"

    @server.resource("other://x")
    def other() -> str:
        return f"other from {vendor.name}"

    if vendor.name == "vendor_a":

        @server.resource("docs://only_a")
        def only_a() -> str:
            return "only a"

    return server


def build(serve: Any) -> tuple[str, DecisionRecorder, dict[str, Vendor]]:
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    router = McpRouter(routes=(DOCS,))
    for name, vendor in vendors.items():
        app = Switchable(vendor_server(vendor).streamable_http_app(), vendor)
        router.mount(name, InProcessBackend(app), middleware=[breaker()])
    recorder = DecisionRecorder(router)
    return serve(recorder).mcp_url, recorder, vendors


def served_by(result: Any) -> dict[str, Any]:
    report: dict[str, Any] = (result.meta or {})[ROUTER_META_KEY]
    return report


@pytest.mark.parametrize("era", ERAS)
async def test_routed_resources_are_listed_once_under_their_own_uri(era: Era, serve: Any) -> None:
    url, _, _ = build(serve)
    async with connect(url, era) as client:
        uris = sorted(str(resource.uri) for resource in (await client.list_resources()).resources)
    assert uris == ["docs://guide", "docs://only_a", "vendor_a+other://x", "vendor_b+other://x"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_read_moves_to_the_fallback_when_the_primary_is_down_and_says_so(era: Era, serve: Any) -> None:
    url, recorder, vendors = build(serve)
    async with connect(url, era) as client:
        first = await client.read_resource("docs://guide")
        assert first.contents[0].text == "guide from vendor_a"  # type: ignore[union-attr]
        assert served_by(first) == {"route": "docs://", "server": "vendor_a", "fallback": False}
        vendors["vendor_a"].down = True  # a read is always safe to send again elsewhere
        second = await client.read_resource("docs://guide")
        assert second.contents[0].text == "guide from vendor_b"  # type: ignore[union-attr]
        report = served_by(second)
        assert (report["server"], report["fallback"], report["route"]) == ("vendor_b", True, "docs://")
        assert [attempt["server"] for attempt in report["tried"]] == ["vendor_a"]
        with pytest.raises(MCPError) as missing:  # only vendor_a has it: the fallback's own answer, as it said it
            await client.read_resource("docs://only_a")
    assert missing.value.code not in OUTAGE_CODES, missing.value
    fallbacks = [attributes for outcome, attributes in recorder.of("router") if outcome == "fallback"]
    assert len(fallbacks) == 2, fallbacks
    assert {"route": "docs://", "server": "vendor_a", "to": "vendor_b"}.items() <= fallbacks[0].items()
    assert vendors["vendor_b"].ran("guide") == 1


@pytest.mark.parametrize("era", ERAS)
async def test_a_members_namespaced_uri_is_not_readable_at_the_aggregate(era: Era, serve: Any) -> None:
    url, _, vendors = build(serve)
    async with connect(url, era) as client:
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("vendor_b+docs://guide")  # around the route to the fallback: refused
        assert unknown.value.code == JsonRpcCode.INVALID_PARAMS
        unrouted = await client.read_resource("vendor_b+other://x")  # not under the prefix: as always
        assert unrouted.contents[0].text == "other from vendor_b"  # type: ignore[union-attr]
    assert vendors["vendor_b"].calls == {}


@pytest.mark.parametrize(
    "prefix", ["", "docs", " docs://", "docs:// x", "do cs://", "docs://\n", "x" * 190 + "://" + "y" * 20, "1docs://"]
)
def test_a_resource_prefix_is_a_uri_prefix_with_a_scheme(prefix: str) -> None:
    with pytest.raises(ValueError, match="URI prefix"):
        Route(resource_prefix=prefix, primary="vendor_a")


def test_a_prefix_that_reads_as_a_namespaced_uri_and_two_routes_for_one_prefix_are_refused() -> None:
    for routes, message in (
        ((Route(resource_prefix="a+docs://", primary="b"),), "namespaced URI"),
        ((Route(resource_prefix="docs://", primary="a"), Route(resource_prefix="docs://", primary="b")), "two routes"),
    ):
        router = McpRouter(routes=routes)
        router.mount("a", MCPServer("a").streamable_http_app())
        router.mount("b", MCPServer("b").streamable_http_app())
        with pytest.raises(ValueError, match=message):
            _ = router.aggregate


async def test_the_serving_backend_of_a_read_is_on_the_span_and_in_the_access_line(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    vendors = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}
    router = McpRouter(routes=(DOCS,))
    for name, vendor in vendors.items():
        router.mount(name, Switchable(vendor_server(vendor).streamable_http_app(), vendor), middleware=[breaker()])
    url = serve(TracingMiddleware(router, tracer_provider=provider, access_log=True)).mcp_url
    vendors["vendor_a"].down = True
    async with connect(url, "modern") as client:
        result = await client.read_resource("docs://guide")
    assert result.contents[0].text == "guide from vendor_b"  # type: ignore[union-attr]

    def read_spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name.startswith("resources/read")]

    assert await held_within(lambda: bool(read_spans()))
    attributes = dict(read_spans()[-1].attributes or {})
    assert attributes["mcp_middleware.router.server"] == "vendor_b"
    assert attributes["mcp_middleware.router.route"] == "docs://"
    assert attributes["mcp_middleware.router.fallback"] is True

    def access_lines() -> list[dict[str, Any]]:
        found = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
        return [line for line in found if line.get("mcp.target") == "docs://guide"]

    assert await held_within(lambda: bool(access_lines()))
    decisions = [d for d in access_lines()[-1]["decisions"] if d["component"] == "router"]
    assert [d["outcome"] for d in decisions] == ["routed", "fallback", "routed"]
    assert decisions[-1]["server"] == "vendor_b" and decisions[-1]["route"] == "docs://"

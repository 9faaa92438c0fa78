"""The measured path reads a request's name once and skips learning from a call whose label set is remembered (its
name is known already); a list is learned from every time. Twin servers, one measured and one on the full path, whose
tool list grows while they serve, must export the same labels: a tool only a later list names is labelled by it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from mcp.server.mcpserver import MCPServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NoOpTracerProvider

from mcp_middleware.tracing import TracingMiddleware
from tests.conftest import Served
from tests.support.waiting import until

from .conftest import Metrics
from .test_measured import _modern_call, exported

pytestmark = pytest.mark.anyio

DURATION = "mcp.server.operation.duration"


@pytest.fixture
def twins() -> Iterator[tuple[Metrics, Metrics]]:
    made = []
    for _ in range(2):
        reader = InMemoryMetricReader()
        made.append(Metrics(MeterProvider(metric_readers=[reader]), reader))
    yield made[0], made[1]
    for metrics in made:
        metrics.provider.shutdown()


async def _post(http: httpx2.AsyncClient, request_id: int, method: str, params: dict[str, Any]) -> None:
    if method == "tools/call":
        body, mirrored = _modern_call(request_id, params["name"], params["arguments"])
    else:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {"_meta": meta}})
        mirrored = {"mcp-protocol-version": "2026-07-28", "mcp-method": method}
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream", **mirrored}
    assert (await http.post("/mcp", content=body, headers=headers)).status_code == 200


async def test_a_tool_a_later_list_names_is_labelled_on_the_measured_path(
    serve: Any, twins: tuple[Metrics, Metrics]
) -> None:
    lean, full = twins
    servers: list[tuple[MCPServer, Served]] = []
    for metrics, measured in ((lean, True), (full, False)):
        server = MCPServer("growing")

        @server.tool()
        def first(text: str) -> str:
            """Return the text."""
            return text

        app = TracingMiddleware(
            server.streamable_http_app(), tracer_provider=NoOpTracerProvider(), meter_provider=metrics.provider
        )
        servers.append((server, serve(app.mcp_direct if measured else app)))

    for server, served in servers:
        async with httpx2.AsyncClient(base_url=served.base, timeout=30) as http:
            await _post(http, 1, "tools/list", {})  # remembered from now on: a list's set has no name
            await _post(http, 2, "tools/call", {"name": "first", "arguments": {"text": "a"}})
            await _post(
                http, 3, "tools/call", {"name": "first", "arguments": {"text": "b"}}
            )  # remembered: skips learning

            @server.tool()
            def later(text: str) -> str:
                """Fail: a tool error teaches no name; only the list does."""
                raise ValueError(text)

            await _post(http, 4, "tools/list", {})  # the remembered list set: still learned from
            await _post(http, 5, "tools/call", {"name": "later", "arguments": {"text": "c"}})

    def labels(metrics: Metrics) -> set[tuple[Any, Any]]:
        return {
            ((p.attributes or {}).get("gen_ai.tool.name"), (p.attributes or {}).get("error.type"))
            for p in metrics.histogram(DURATION)
        }

    def recorded(metrics: Metrics) -> int:
        return sum(p.count for p in metrics.histogram(DURATION))

    await until(lambda: recorded(lean) == recorded(full) == 5)  # (recorded once the app returned, after the answer)
    assert exported(lean) == exported(full)
    assert {("first", None), ("later", "tool_error"), (None, None)} == labels(lean)

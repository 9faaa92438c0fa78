"""The measured-only path (`TracingMiddleware.mcp_direct` with no span and no access line) records what the full
path records: twin servers, one entered through `handle`, the other through `__call__`, get the same traffic
and must export the same metrics (every label set, count and bucket bound; not the durations themselves).
It reads a request's name once and learns nothing from a call whose label set is remembered (its name is known
already); a list is learned from every time, which twins whose tool list grows while they serve must show."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from opentelemetry.trace import NoOpTracerProvider
from starlette.types import ASGIApp, Receive, Scope, Send

import mcp_middleware.tracing.middleware as tracing_middleware
from mcp_middleware.core import Component, Outcome
from mcp_middleware.tracing import TracingMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server
from tests.support.waiting import until

from .conftest import Metrics, RecordingDecider

pytestmark = pytest.mark.anyio

DURATION = "mcp.server.operation.duration"
DECISIONS = "mcp.middleware.decisions"


class _Boom:
    """Raises for a request carrying `x-boom` (an app that crashes: `error.type` is the exception's name)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(key == b"x-boom" for key, _ in scope["headers"]):
            raise LookupError("boom")
        await self.app(scope, receive, send)


def _middleware(metrics: Metrics, **options: Any) -> TracingMiddleware:
    decider = RecordingDecider(
        _Boom(build_server().streamable_http_app()),
        [(Component.AUTH, Outcome.ALLOW, {"subject": "alice"}), (Component.CACHE, Outcome.MISS, {})],
    )
    return TracingMiddleware(
        decider,
        tracer_provider=NoOpTracerProvider(),
        meter_provider=metrics.provider,
        server_name=lambda scope: "backend" if scope["path"] == "/mcp" else None,
        **options,
    )


def exported(metrics: Metrics) -> dict[str, Any]:
    """What a backend would store: every point's labels, count and bucket bounds (not the durations: they differ)."""
    histogram = sorted(
        (sorted((p.attributes or {}).items()), p.count, tuple(p.explicit_bounds)) for p in metrics.histogram(DURATION)
    )
    return {"duration": histogram, "decisions": metrics.counts(DECISIONS)}


def _modern_call(request_id: int, tool: str, arguments: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": tool, "arguments": arguments, "_meta": meta}
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": tool}
    return orjson.dumps(body), headers


async def traffic(served: Served, era: Era) -> None:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(base_url=served.base, timeout=30) as http:
        # Before any tools/list: a tool error teaches no name (its label stays _OTHER), a success does.
        for request_id, tool, arguments in ((1, "failing", {"reason": "x"}), (2, "echo", {"text": "a"})):
            body, mirrored = _modern_call(request_id, tool, arguments)
            assert (await http.post("/mcp", content=body, headers={**headers, **mirrored})).status_code == 200
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "a"})
        await client.call_tool("failing", {"reason": "x"})  # isError: tool_error
        with pytest.raises(MCPError):
            await client.get_prompt("missing", {})  # a JSON-RPC error
    async with httpx2.AsyncClient(base_url=served.base, timeout=30) as http:
        assert (await http.post("/mcp", content=b"{not json", headers=headers)).status_code == 400  # core refusal
        assert (await http.get("/elsewhere")).status_code == 404  # no MCP path: not an operation
        call = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}}'
        crashed = await http.post("/mcp", content=call, headers={**headers, "x-boom": "1"})
        assert crashed.status_code == 500  # uvicorn's answer to the crash; the metrics say LookupError


@pytest.mark.parametrize("era", ERAS)
async def test_the_measured_path_records_what_the_full_path_records(
    serve: Any, twins: tuple[Metrics, Metrics], era: Era, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    real = tracing_middleware.measure

    def spy(*args: Any) -> Any:
        taken.append(args[1]["path"])
        return real(*args)

    monkeypatch.setattr(tracing_middleware, "measure", spy)
    lean, full = twins
    lean_app, full_app = _middleware(lean), _middleware(full)
    await traffic(serve(lean_app.mcp_direct), era)
    await traffic(serve(full_app), era)

    def crashed(metrics: Metrics) -> bool:
        return any((p.attributes or {}).get("error.type") == "LookupError" for p in metrics.histogram(DURATION))

    await until(lambda: crashed(lean) and crashed(full))
    assert taken and set(taken) <= {"/mcp", "/elsewhere"}  # only `handle` took it, for every request
    assert exported(lean) == exported(full)
    labels = {tuple(sorted(dict(p[0]).items())) for p in exported(lean)["duration"]}
    error_types = {dict(label).get("error.type") for label in labels}
    assert {None, "tool_error", "LookupError"} <= error_types
    assert {dict(label).get("mcp_middleware.server") for label in labels} == {"backend"}
    first_calls = {
        dict(label).get("gen_ai.tool.name") for label in labels if dict(label).get("error.type") == "tool_error"
    }
    assert "_OTHER" in first_calls  # the first `failing`, before the list named it


async def test_the_full_path_is_kept_for_spans_an_access_line_or_http_metrics(
    twins: tuple[Metrics, Metrics], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[object] = []
    monkeypatch.setattr(tracing_middleware, "measure", lambda *args: taken.append(args))
    lean, _ = twins
    scope = {"type": "http", "path": "/mcp", "headers": []}

    async def nothing() -> dict[str, Any]:
        raise AssertionError("not read")

    async def ignore(message: Any) -> None:
        raise AssertionError("not sent")

    for options in ({"access_log": True}, {"http_metrics": True}):
        awaitable = _middleware(lean, **options).mcp_direct(scope, nothing, ignore)
        assert getattr(awaitable, "__qualname__", "") == "TracingMiddleware.__call__"
        awaitable.close()  # type: ignore[attr-defined]
    inner = _middleware(lean)
    awaitable = inner.mcp_direct({**scope, "mcp_middleware.tracing.exchange": object()}, nothing, ignore)
    assert getattr(awaitable, "__qualname__", "") == "TracingMiddleware.__call__"  # an outer one traces it
    awaitable.close()  # type: ignore[attr-defined]
    assert taken == []


async def test_an_inner_tracing_middleware_adds_nothing_under_the_measured_path(serve: Any, metrics: Metrics) -> None:
    inner = TracingMiddleware(
        build_server().streamable_http_app(), tracer_provider=NoOpTracerProvider(), meter_provider=metrics.provider
    )
    outer = TracingMiddleware(inner, tracer_provider=NoOpTracerProvider(), meter_provider=metrics.provider)
    served = serve(outer.mcp_direct)
    async with connect(served.mcp_url, "modern") as client:
        await client.call_tool("echo", {"text": "once"})

    def echo_count() -> int:
        return sum(
            p.count for p in metrics.histogram(DURATION) if (p.attributes or {}).get("gen_ai.tool.name") == "echo"
        )

    await until(lambda: echo_count() >= 1)
    assert echo_count() == 1


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

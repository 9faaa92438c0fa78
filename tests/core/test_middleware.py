"""Through the core, an MCP server behaves exactly as it does bare, in both eras, and streams in real time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import orjson
import pytest
from mcp import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware import McpCoreMiddleware, get_mcp_request
from mcp_middleware.core import Era as CoreEra
from mcp_middleware.core import McpRequest, RequestKind
from tests.conftest import ERAS, Era, OutcomeLog, Served, connect
from tests.servers import PROGRESS_INTERVAL, ToolLog, build_server
from tests.support.waiting import held_within

pytestmark = pytest.mark.anyio


async def exercise(url: str, era: Era) -> dict[str, Any]:
    """Everything a client sees from the test server, in a form two runs can be compared by."""
    seen: dict[str, Any] = {}
    async with connect(url, era) as client:
        seen["tools"] = [t.model_dump(mode="json") for t in (await client.list_tools()).tools]
        seen["echo"] = (await client.call_tool("echo", {"text": "héllo ✓"})).model_dump(mode="json")
        seen["failing"] = (await client.call_tool("failing", {"reason": "test"})).model_dump(mode="json")
        seen["lookup"] = (await client.call_tool("lookup", {"key": "a"})).model_dump(mode="json")
        seen["large"] = len((await client.call_tool("large", {"size": 300_000})).content[0].text)  # type: ignore[union-attr]
        try:
            seen["unknown tool"] = (await client.call_tool("no_such_tool", {})).model_dump(mode="json")
        except MCPError as exc:
            seen["unknown tool"] = ("MCPError", exc.code)
        try:
            seen["bad arguments"] = (await client.call_tool("echo", {"wrong": 1})).model_dump(mode="json")
        except MCPError as exc:
            seen["bad arguments"] = ("MCPError", exc.code)
        seen["resources"] = [r.model_dump(mode="json") for r in (await client.list_resources()).resources]
        seen["read"] = (await client.read_resource("demo://greeting")).model_dump(mode="json")
        seen["prompts"] = [p.model_dump(mode="json") for p in (await client.list_prompts()).prompts]
        seen["prompt"] = (await client.get_prompt("greet", {"name": "Ada"})).model_dump(mode="json")
        try:
            await client.read_resource("demo://missing")
        except MCPError as exc:
            seen["missing resource"] = ("MCPError", exc.code)
    return seen


@pytest.mark.parametrize("era", ERAS)
async def test_core_is_transparent(era: Era, serve: Any) -> None:
    bare = serve(build_server().streamable_http_app())
    core = serve(McpCoreMiddleware(build_server().streamable_http_app()))
    expected = await exercise(bare.mcp_url, era)
    assert await exercise(core.mcp_url, era) == expected
    assert expected["failing"]["is_error"] is True
    assert expected["large"] == 300_000


@pytest.mark.parametrize("era", ERAS)
async def test_progress_arrives_while_the_tool_runs(era: Era, serve: Any) -> None:
    served = serve(McpCoreMiddleware(build_server().streamable_http_app()))
    arrivals: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.monotonic())

    async with connect(served.mcp_url, era) as client:
        start = time.monotonic()
        result = await client.call_tool("slow", {"steps": 4}, progress_callback=on_progress)
        end = time.monotonic()
    assert result.content[0].text == "done after 4 steps"  # type: ignore[union-attr]
    assert len(arrivals) == 4
    # Buffered, all four would arrive together at the end; streamed, they are spread out.
    # (The first call also carries the client's connection set-up: the first progress is compared
    # with the whole call, not with a fixed delay, so a loaded machine does not fail the test.)
    assert arrivals[0] - start < (end - start) / 2
    assert end - arrivals[0] > 3 * PROGRESS_INTERVAL * 0.8
    assert arrivals[3] - arrivals[0] > 3 * PROGRESS_INTERVAL * 0.8


class ViewSpy:
    """An ASGI app between the core and the server that records the view it was handed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.views: list[McpRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            view = get_mcp_request(scope)
            assert view is not None
            self.views.append(view)
        await self.app(scope, receive, send)


@pytest.mark.parametrize("era", ERAS)
async def test_the_view_reaches_inner_apps(era: Era, serve: Any) -> None:
    spy = ViewSpy(build_server().streamable_http_app())
    log = OutcomeLog()
    served = serve(McpCoreMiddleware(spy, on_outcome=log))
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
        await client.call_tool("failing", {"reason": "x"})
        await client.read_resource("demo://greeting")

    calls = [v for v in spy.views if v.method == "tools/call"]
    echo = next(v for v in calls if v.name == "echo")
    assert echo.kind is RequestKind.REQUEST
    assert echo.params is not None
    assert echo.params["arguments"] == {"text": "hi"}
    assert echo.target == "echo"
    assert orjson.loads(echo.body)["params"]["name"] == "echo"
    read = next(v for v in spy.views if v.method == "resources/read")
    assert read.uri == read.target == "demo://greeting"
    if era == "modern":
        assert echo.era is CoreEra.MODERN
        assert echo.protocol_version == "2026-07-28"
        assert echo.headers_verified
        assert echo.session_id is None
        assert echo.meta is not None
        assert echo.meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    else:
        assert echo.era is CoreEra.LEGACY
        assert echo.protocol_version == "2025-11-25"
        assert not echo.headers_verified
        assert echo.session_id
        init = next(v for v in spy.views if v.method == "initialize")
        assert init.session_id is None
        assert init.protocol_version == "2025-11-25"
        assert {v.kind for v in spy.views} >= {RequestKind.NOTIFICATION, RequestKind.TERMINATE}

    await log.wait_for(lambda r, o: r.method == "resources/read")
    by_target = {(r.method, r.target): o for r, o in log.items if r.kind is RequestKind.REQUEST}
    echo_outcome = by_target["tools/call", "echo"]
    assert echo_outcome.status == 200
    assert echo_outcome.complete and echo_outcome.succeeded
    assert echo_outcome.result is not None
    assert echo_outcome.result["content"][0]["text"] == "hi"
    assert echo_outcome.duration > 0
    assert echo_outcome.bytes > 0
    failing = by_target["tools/call", "failing"]
    assert failing.is_tool_error and not failing.succeeded and failing.status == 200
    assert by_target["resources/read", "demo://greeting"].result is not None


async def test_chunked_request_bodies_are_reassembled(serve: Any) -> None:
    spy = ViewSpy(build_server().streamable_http_app())
    served = serve(McpCoreMiddleware(spy))
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": "req-1",
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "split across chunks"}, "_meta": meta},
        }
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]
            await anyio.lowlevel.checkpoint()

    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
    }
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, content=chunks(), headers=headers)
    assert response.status_code == 200
    message = orjson.loads(response.content)
    assert message["id"] == "req-1"
    assert message["result"]["content"][0]["text"] == "split across chunks"
    assert spy.views[0].body == body


async def test_modern_disconnect_cancels_and_leaves_no_task(serve: Any) -> None:
    """2026-07-28: closing the response stream is the cancellation; nothing may linger."""
    log = ToolLog()
    served: Served = serve(McpCoreMiddleware(build_server(log).streamable_http_app()))
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "progressToken": "p1",
    }
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "slow", "arguments": {"steps": 50}, "_meta": meta},
        }
    )
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "slow",
    }
    async with httpx2.AsyncClient(timeout=10) as http:
        await http.post(
            served.mcp_url,
            content=body.replace(b'"slow"', b'"echo"').replace(b'{"steps":50}', b'{"text":"warm"}'),
            headers={**headers, "mcp-name": "echo"},
        )
    baseline = served.tasks()

    async with (
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("POST", served.mcp_url, content=body, headers=headers) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if "notifications/progress" in line:
                break
    assert await held_within(lambda: "cancelled" in log.events), log.events
    assert await held_within(lambda: served.tasks() <= baseline), (served.tasks(), baseline)
    assert "finished" not in log.events


async def test_legacy_cancellation_leaves_no_task(serve: Any) -> None:
    """2025-11-25: the client cancels with notifications/cancelled, then ends the session."""
    log = ToolLog()
    served: Served = serve(McpCoreMiddleware(build_server(log).streamable_http_app()))
    async with connect(served.mcp_url, "legacy") as client:
        await client.call_tool("echo", {"text": "warm"})
    baseline = served.tasks()

    first_progress = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_progress.set()

    async with connect(served.mcp_url, "legacy") as client, anyio.create_task_group() as tg:

        async def call() -> None:
            await client.call_tool("slow", {"steps": 50}, progress_callback=on_progress)

        tg.start_soon(call)
        with anyio.fail_after(5):
            await first_progress.wait()
        tg.cancel_scope.cancel()
    assert await held_within(lambda: "cancelled" in log.events), log.events
    assert await held_within(lambda: served.tasks() <= baseline), (served.tasks(), baseline)


async def _lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def _crashing_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await receive()
    raise RuntimeError("secret internal detail")


async def _crashing_mid_stream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
    raise RuntimeError("after the start")


@pytest.mark.parametrize("with_hook", [False, True])
async def test_a_crash_before_responding_is_a_json_rpc_error(with_hook: bool, serve: Any) -> None:
    log = OutcomeLog()
    served = serve(McpCoreMiddleware(_crashing_app, on_outcome=log if with_hook else None))
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            served.mcp_url,
            content=b'{"jsonrpc":"2.0","id":"c-1","method":"tools/list"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 500
    assert response.json() == {"jsonrpc": "2.0", "id": "c-1", "error": {"code": -32603, "message": "Internal error"}}
    assert "secret" not in response.text
    if with_hook:
        await log.wait_for(lambda r, o: True)
        outcome = log.items[0][1]
        assert outcome.status == 500 and outcome.error_code == -32603


async def test_a_crash_after_the_response_started_is_not_answered_twice(serve: Any) -> None:
    log = OutcomeLog()
    app = McpCoreMiddleware(_crashing_mid_stream, on_outcome=log)
    served = serve(app)
    async with httpx2.AsyncClient(timeout=10) as http:
        with pytest.raises(httpx2.RemoteProtocolError):
            await http.post(
                served.mcp_url,
                content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
                headers={"content-type": "application/json"},
            )
    await log.wait_for(lambda r, o: True)
    outcome = log.items[0][1]
    assert outcome.status == 200 and not outcome.complete

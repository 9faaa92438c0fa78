"""A `fastmcp.FastMCP` server (the optional `fastmcp` extra) behind the core, in both eras."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import pytest

from mcp_middleware import McpCoreMiddleware
from mcp_middleware.core import McpRequest, ResponseOutcome
from tests.conftest import ERAS, Era, connect, require

fastmcp = require("fastmcp", "the fastmcp extra is tested in CI")
Context = fastmcp.Context

pytestmark = pytest.mark.anyio

INTERVAL = 0.3


def build_fastmcp_app(outcomes: list[tuple[McpRequest, ResponseOutcome]]) -> Any:
    server = fastmcp.FastMCP("fastmcp-under-test")

    @server.tool
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool
    def explode() -> str:
        raise ValueError("boom")

    @server.tool
    async def slow(steps: int, ctx: Context) -> str:
        for done in range(steps):
            await ctx.report_progress(progress=done + 1, total=steps)
            await anyio.sleep(INTERVAL)
        return "done"

    # fastmcp's http_app() is a Starlette app whose lifespan uvicorn runs through the core.
    return McpCoreMiddleware(server.http_app(path="/mcp"), on_outcome=lambda r, o: outcomes.append((r, o)))


@pytest.mark.parametrize("era", ERAS)
async def test_fastmcp_server_behind_the_core(era: Era, serve: Any) -> None:
    outcomes: list[tuple[McpRequest, ResponseOutcome]] = []
    served = serve(build_fastmcp_app(outcomes))
    arrivals: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.monotonic())

    async with connect(served.mcp_url, era) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"add", "explode", "slow"}
        assert (await client.call_tool("add", {"a": 2, "b": 40})).structured_content == {"result": 42}
        assert (await client.call_tool("explode", {})).is_error
        await client.call_tool("slow", {"steps": 3}, progress_callback=on_progress)
        end = time.monotonic()

    assert len(arrivals) == 3
    assert end - arrivals[0] > 2 * INTERVAL * 0.8  # streamed while the tool ran, not buffered
    calls = {r.name: o for r, o in outcomes if r.method == "tools/call"}
    assert calls["add"].succeeded
    assert calls["explode"].is_tool_error


async def test_fastmcp_bad_input_is_answered_by_the_core(serve: Any) -> None:
    served = serve(build_fastmcp_app([]))
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(
            served.mcp_url,
            content=b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
            headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600

"""A route whose primary is a stdio backend (reached through its one-backend aggregate, the SDK bridge)
fails over like a URL one: real child processes, real router under uvicorn, both eras."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from mcp_middleware.router import ROUTER_META_KEY, InProcessBackend, McpRouter, Route, StdioBackend
from tests.conftest import ERAS, Era, connect
from tests.router.pool_replica import build

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
ROUTES = (
    Route(tool="lookup", primary="local", fallback=("remote",)),
    Route(tool="record", primary="local", fallback=("remote",)),
)


def router_with(command: list[str]) -> McpRouter:
    router = McpRouter(routes=ROUTES)
    router.mount("local", StdioBackend(command[0], command[1:], cwd=str(ROOT), timeout=10, restart_delay=0.2))
    router.mount("remote", InProcessBackend(build("remote").streamable_http_app()))
    return router


def served_by(result: Any) -> dict[str, Any]:
    report: dict[str, Any] = (result.meta or {})[ROUTER_META_KEY]
    return report


@pytest.mark.parametrize("era", ERAS)
async def test_a_stdio_primary_that_cannot_start_hands_calls_to_its_fallback(era: Era, serve: Any) -> None:
    url = serve(router_with([sys.executable, "-c", "raise SystemExit(3)"])).mcp_url
    with anyio.fail_after(60):
        async with connect(url, era) as client:
            result = await client.call_tool("record", {"entry": "e"})  # nothing ran at the primary: even a write
    assert result.content[0].text == "recorded e at remote"  # type: ignore[union-attr]
    report = served_by(result)
    assert (report["server"], report["fallback"]) == ("remote", True)
    assert [attempt["server"] for attempt in report["tried"]] == ["local"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_stdio_primary_killed_mid_call_hands_a_read_over_but_not_a_write(era: Era, serve: Any) -> None:
    url = serve(router_with([sys.executable, "-m", "tests.router.pool_stdio_replica"])).mcp_url
    with anyio.fail_after(90):
        async with connect(url, era) as client:
            pid = (await client.call_tool("local__whoami", {})).content[0].text  # type: ignore[union-attr]
            first = await client.call_tool("lookup", {"key": "k"})
            assert first.content[0].text == f"k@{pid}"  # type: ignore[union-attr]
            outcomes: dict[str, Any] = {}

            async def call(tool: str, arguments: dict[str, Any]) -> None:
                try:
                    outcomes[tool] = await client.call_tool(tool, arguments)
                except MCPError as exc:
                    outcomes[tool] = exc

            async with anyio.create_task_group() as group:
                group.start_soon(call, "lookup", {"key": "slow", "delay": 3.0})
                group.start_soon(call, "record", {"entry": "w", "delay": 3.0})
                await anyio.sleep(1.0)
                os.kill(int(pid.removeprefix("pid")), signal.SIGKILL)  # the router's child, by its own pid
    read = outcomes["lookup"]
    assert not isinstance(read, MCPError), read
    assert read.content[0].text == "slow@remote" and served_by(read)["fallback"] is True
    write = outcomes["record"]
    assert isinstance(write, MCPError), write  # it may have run at the primary: never sent again
    assert write.code == -32017 and write.data["mayHaveRun"] is True and write.data["tried"] == ["local"]

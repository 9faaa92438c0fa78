"""A stdio command as a backend: reached over an SDK session, supervised, restarted, re-discovered."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_middleware.router import McpRouter, StdioBackend
from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio

SCRIPT = str(Path(__file__).with_name("stdio_server.py"))


def stdio_backend(state: Path) -> StdioBackend:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return StdioBackend(
        sys.executable, [SCRIPT, str(state)], env=env, timeout=3, restart_delay=0.2, health_interval=0.3
    )


@pytest.mark.parametrize("era", ERAS)
async def test_stdio_backend_through_a_path_mount_and_the_aggregate(era: Era, serve: Any, tmp_path: Path) -> None:
    router = McpRouter()
    router.mount("local", stdio_backend(tmp_path / "generation"))
    served = serve(router)
    async with connect(f"{served.base}/mcp/local", era) as client:
        mounted = [tool.name for tool in (await client.list_tools()).tools]
        generation = await client.call_tool("generation_1", {})
    async with connect(served.mcp_url, era) as client:
        aggregated = [tool.name for tool in (await client.list_tools()).tools]
    assert mounted == ["generation_1", "pid"]  # the path mount speaks the backend's own names
    assert generation.structured_content == {"result": 1}
    assert aggregated == ["local__generation_1", "local__pid"]


async def test_dead_stdio_backend_is_restarted_and_its_tools_rediscovered(serve: Any, tmp_path: Path) -> None:
    router = McpRouter(list_ttl=60)
    router.mount("local", stdio_backend(tmp_path / "generation"))
    served = serve(router)
    async with connect(served.mcp_url, "modern") as client:
        before = [tool.name for tool in (await client.list_tools()).tools]
        pid = (await client.call_tool("local__pid", {})).structured_content["result"]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        after: list[str] = []
        with anyio.fail_after(10):  # health pings notice, the supervisor restarts it with backoff
            while "local__generation_2" not in after:
                await anyio.sleep(0.2)
                after = [tool.name for tool in (await client.list_tools()).tools]
        new_pid = (await client.call_tool("local__pid", {})).structured_content["result"]  # type: ignore[index]
    assert before == ["local__generation_1", "local__pid"]
    assert after == ["local__generation_2", "local__pid"]  # re-discovered, not served from the old cache
    assert new_pid != pid

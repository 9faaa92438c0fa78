"""A stdio command as a backend: reached over an SDK session, supervised, restarted, re-discovered."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_middleware.router import McpRouter, StdioBackend
from tests.conftest import ERAS, Era, connect, serve_app
from tests.support import processes

pytestmark = pytest.mark.anyio

SCRIPT = str(Path(__file__).with_name("stdio_server.py"))


def stdio_backend(state: Path) -> StdioBackend:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return StdioBackend(
        sys.executable, [SCRIPT, str(state)], env=env, timeout=10, restart_delay=0.2, health_interval=0.3
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


def group_members(pgid: int) -> list[processes.Proc]:
    return [proc for proc in processes.snapshot().values() if proc.pgid == pgid and not proc.zombie]


async def test_what_a_wrapper_started_ends_with_each_session_and_at_shutdown(tmp_path: Path) -> None:
    # A wrapper that starts a helper in the background, then becomes the server (`exec`): when the server
    # dies, the SDK sees its process gone and stops there; the helper is left in the server's group.
    helper = "sleep 300 </dev/null >/dev/null 2>&1 &"
    script = f"{helper} exec {shlex.join([sys.executable, SCRIPT, str(tmp_path / 'generation')])}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    backend = StdioBackend("sh", ["-c", script], env=env, timeout=10, restart_delay=0.2, health_interval=0.3)
    router = McpRouter(list_ttl=60)
    router.mount("local", backend)
    with serve_app(router) as served:
        async with connect(served.mcp_url, "modern") as client:
            first = (await client.call_tool("local__pid", {})).structured_content["result"]  # type: ignore[index]
            first_helpers = [proc for proc in group_members(first) if proc.pid != first]
            assert [proc.cmdline for proc in first_helpers] == ["sleep 300"]
            os.kill(first, signal.SIGKILL)  # a crash of the server alone
            names: list[str] = []
            with anyio.fail_after(15):
                while "local__generation_2" not in names:
                    await anyio.sleep(0.2)
                    names = [tool.name for tool in (await client.list_tools()).tools]
            second = (await client.call_tool("local__pid", {})).structured_content["result"]  # type: ignore[index]
        # The crashed session's group was ended before the restart: one helper at a time, not one per crash.
        assert not [proc.describe() for proc in first_helpers if processes.alive(proc.pid)]
        second_helpers = [proc for proc in group_members(second) if proc.pid != second]
        assert [proc.cmdline for proc in second_helpers] == ["sleep 300"]
    # The router's shutdown ended the last session's group too.
    assert not [proc.describe() for proc in second_helpers if processes.alive(proc.pid)]
    assert not processes.alive(second)

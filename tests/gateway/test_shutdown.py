"""Graceful shutdown: on SIGTERM in-flight requests finish within the bound, and stdio children are terminated."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.conftest import SIGNALS, free_port, require_binary
from tests.support import processes

pytestmark = pytest.mark.xdist_group(SIGNALS)  # shutdown within a bound; the npx case shares the npx cache

ROOT = Path(__file__).resolve().parents[2]


def start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """A gateway process in a group of its own (the test stops it with SIGTERM to its pid alone)."""
    return processes.start_gateway(config, port, log)


@pytest.mark.anyio
async def test_sigterm_lets_the_in_flight_call_finish_and_stops_stdio_children(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
shutdown_timeout = 10
[[servers]]
name = "local"
app = "tests.servers:build_server"
[[servers]]
name = "text"
command = ["{{python}}", "{ROOT / "examples" / "gateway" / "stdio_server.py"}"]
""",
        encoding="utf-8",
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    process = await anyio.to_thread.run_sync(start, config, port, log)
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp", cache=None) as client:
            assert (await client.call_tool("text__reverse", {"text": "ab"})).content[0].text == "ba"  # type: ignore[union-attr]
            stdio = [child.pid for child in processes.descendants(process.pid)]
            assert stdio, "the stdio server runs as a child of the gateway"
            result: list[str] = []

            async def slow_call() -> None:
                answer = await client.call_tool("local__slow", {"steps": 8})  # ~8 progress intervals
                result.append(answer.content[0].text)  # type: ignore[union-attr]

            async with anyio.create_task_group() as group:
                group.start_soon(slow_call)
                await anyio.sleep(0.3)
                started = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
        assert result and result[0].startswith("done"), result
        exit_code = await anyio.to_thread.run_sync(process.wait, 15)
        # uvicorn re-raises the signal once it has shut down gracefully (what supervisors expect).
        assert exit_code in (0, -signal.SIGTERM), log.read_text()[-2000:]
        assert "Application shutdown complete." in log.read_text()
        assert time.monotonic() - started < 12  # within shutdown_timeout (+ margin)
        assert not any(processes.alive(pid) for pid in stdio), "stdio children outlived the gateway"
    finally:
        processes.stop(process)


def wrapped_backend(wrapper: str) -> tuple[list[str], str, str]:
    """A stdio backend started through a wrapper: (command, a tool to call, what the server's cmdline shows)."""
    if wrapper == "npx":
        npx = require_binary("npx", "a stdio backend started through npx (CI installs node)")
        return [npx, "-y", "@modelcontextprotocol/server-everything", "stdio"], "echo", "mcp-server-everything"
    server = ROOT / "examples" / "gateway" / "stdio_server.py"
    # The shell stays (`; :` keeps it from exec'ing the server): the server is the gateway's grandchild,
    # beside a helper the wrapper started in the background, as wrapper scripts do.
    script = f"sleep 300 </dev/null >/dev/null 2>&1 & {shlex.quote(sys.executable)} {shlex.quote(str(server))}; :"
    return ["sh", "-c", script], "reverse", "stdio_server.py"


@pytest.mark.anyio
@pytest.mark.parametrize("wrapper", ["sh", "npx"])
async def test_sigterm_ends_everything_a_wrapped_stdio_backend_started(wrapper: str, tmp_path: Path) -> None:
    command, tool, server_cmdline = wrapped_backend(wrapper)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nshutdown_timeout = 5\n[[servers]]\nname = "wrapped"\ncommand = {json.dumps(command)}\n'
        "timeout = 60\n",
        encoding="utf-8",
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    process = await anyio.to_thread.run_sync(start, config, port, log)
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp", cache=None) as client:
            answer = await client.call_tool(
                f"wrapped__{tool}", {"text": "ab"} if tool == "reverse" else {"message": "ab"}
            )
            assert not answer.is_error, answer
        tree = processes.descendants(process.pid)
        shown = [child.cmdline for child in tree]
        below_the_wrapper = [child for child in tree if server_cmdline in child.cmdline and child.ppid != process.pid]
        assert below_the_wrapper, f"the server runs below the wrapper, not as the gateway's child: {shown}"
        if wrapper == "sh":
            assert "sleep 300" in shown, shown
        os.kill(process.pid, signal.SIGTERM)
        exit_code = await anyio.to_thread.run_sync(process.wait, 30)
        assert exit_code in (0, -signal.SIGTERM), log.read_text()[-2000:]
        survivors = [child.describe() for child in tree if processes.alive(child.pid)]
        assert survivors == [], f"outlived the gateway: {survivors}\n{log.read_text()[-2000:]}"
    finally:
        processes.stop(process)

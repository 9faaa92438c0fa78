"""Graceful shutdown: on SIGTERM in-flight requests finish within the bound, and stdio children are terminated."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_middleware.gateway", "serve", "-c", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(log.read_text())
        time.sleep(0.05)


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
            stdio = children(process.pid)
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
        assert not any(alive(pid) for pid in stdio), "stdio children outlived the gateway"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)

"""Real software nobody here wrote: `@modelcontextprotocol/server-everything` (npm) over stdio and HTTP.

Needs `npx` and the npm registry (or its cache); CI installs node. Skipped locally without npx.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from mcp_middleware.router import HttpBackend, McpRouter, StdioBackend
from tests.conftest import ERAS, SIGNALS, Era, connect, free_port, require_binary
from tests.support import processes

# In the group of tests/gateway/test_shutdown.py's npx case: two `npx -y` installs of one package at once can clash.
pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group(SIGNALS)]

PACKAGE = "@modelcontextprotocol/server-everything"


@contextlib.contextmanager
def everything_over_http(npx: str) -> Iterator[str]:
    """`npx` starts npm, which starts a shell, which starts node: all of them go with the group."""
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}
    with processes.running([npx, "-y", PACKAGE, "streamableHttp"], env=env, patience=5, **quiet) as process:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None:
                pytest.fail(f"server-everything exited with {process.returncode}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.mark.parametrize("era", ERAS)
async def test_server_everything_over_stdio_and_http(era: Era, serve: Any) -> None:
    npx = require_binary("npx", "server-everything is the npm package @modelcontextprotocol/server-everything")
    with everything_over_http(npx) as url:
        router = McpRouter()
        router.mount("stdio", StdioBackend(npx, ["-y", PACKAGE, "stdio"], timeout=60))
        router.mount("http", HttpBackend(url, timeout=30))
        served = serve(router)
        for mount in ("stdio", "http"):
            # server-everything speaks 2025-11-25 only: through the transparent proxy a modern client falls back
            mode = "legacy" if era == "legacy" else "auto"
            async with Client(f"{served.base}/mcp/{mount}", mode=mode, cache=None) as client:
                tools = [tool.name for tool in (await client.list_tools()).tools]
                echoed = await client.call_tool("echo", {"message": f"via {mount}"})
            assert "echo" in tools
            assert f"via {mount}" in echoed.content[0].text  # type: ignore[union-attr]
        async with connect(served.mcp_url, era) as client:
            listed = await client.list_tools()
            names = [tool.name for tool in listed.tools]
            from_stdio = await client.call_tool("stdio__echo", {"message": "aggregate to stdio"})
            from_http = await client.call_tool("http__echo", {"message": "aggregate to http"})
    assert {"stdio__echo", "http__echo"} <= set(names)
    assert "aggregate to stdio" in from_stdio.content[0].text  # type: ignore[union-attr]
    assert "aggregate to http" in from_http.content[0].text  # type: ignore[union-attr]

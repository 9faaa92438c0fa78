"""A stdio backend as an operator reads it in the log.

Its stderr arrives line by line on `mcp_middleware.router.stdio`, each line prefixed with the
server's name (several servers' output no longer interleaves anonymously); a crash and the restart
are one WARNING each, naming the server; and the project's own health checks raise no deprecation
warning (the SDK's `Client.send_ping` warns that ping is gone from 2026-07-28).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPDeprecationWarning

from mcp_middleware.router import McpRouter, StdioBackend
from mcp_middleware.router.stderr import MAX_LINE
from tests.conftest import ERAS, Era, connect
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

SCRIPT = str(Path(__file__).with_name("noisy_stdio_server.py"))
STDIO_PATIENCE = 10.0
"""How long a stdio child's log line may take: the child is a Python interpreter, slow to (re)start."""


def noisy(**options: Any) -> StdioBackend:
    options.setdefault("timeout", 5)
    return StdioBackend(sys.executable, [SCRIPT], restart_delay=0.2, health_interval=0.2, **options)


def stdio_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mcp_middleware.router.stdio"]


@pytest.mark.parametrize("era", ERAS)
async def test_stderr_lines_carry_the_servers_name(era: Era, serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_middleware.router.stdio")
    router = McpRouter()
    router.mount("text", noisy())  # the mount's name, since the backend was given none
    router.mount("other", noisy(name="renamed"))
    served = serve(router)
    async with connect(f"{served.base}/mcp/text", era) as client:
        assert (await client.call_tool("shout", {"text": "héllo\tfrom text", "times": 2})).structured_content
    async with connect(f"{served.base}/mcp/other", era) as client:
        await client.call_tool("shout", {"text": "from other"})
    await until(lambda: stdio_lines(caplog).count("[text] héllo\tfrom text") == 2, STDIO_PATIENCE)
    await until(lambda: "[renamed] from other" in stdio_lines(caplog), STDIO_PATIENCE)
    assert "[text] noisy: starting up" in stdio_lines(caplog)
    assert "[renamed] noisy: starting up" in stdio_lines(caplog)
    assert all(line.startswith(("[text] ", "[renamed] ")) for line in stdio_lines(caplog))


async def test_a_line_without_end_is_logged_in_bounded_pieces(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcp_middleware.router.stdio")
    router = McpRouter()
    router.mount("flood", noisy())
    served = serve(router)
    async with connect(f"{served.base}/mcp/flood", "modern") as client:
        await client.call_tool("shout", {"text": "x" * 100_000})  # one write, no newline
        await client.call_tool("shout", {"text": "end"})  # the server still answers: its stderr is drained
    await until(lambda: any(line.endswith("xend") for line in stdio_lines(caplog)), STDIO_PATIENCE)
    pieces = [line for line in stdio_lines(caplog) if line.startswith("[flood] x")]
    assert [len(line) - len("[flood] ") for line in pieces] == [MAX_LINE] * 6 + [100_000 - 6 * MAX_LINE + 3]


async def test_a_crash_and_the_restart_are_one_warning_each_naming_the_server(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mcp_middleware.router")
    router = McpRouter()
    router.mount("text", noisy())
    served = serve(router)
    async with connect(served.mcp_url, "modern") as client:
        pid = (await client.call_tool("text__pid", {})).structured_content["result"]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            return any("restarted" in r.getMessage() for r in caplog.records)

        await until(restarted, STDIO_PATIENCE)
        assert (await client.call_tool("text__pid", {})).structured_content["result"] != pid  # type: ignore[index]
    warnings_ = [
        r.getMessage() for r in caplog.records if r.name == "mcp_middleware.router" and r.levelno >= logging.WARNING
    ]
    assert len(warnings_) == 2, warnings_
    assert warnings_[0].startswith("backend 'text' unavailable: ")
    assert warnings_[1] == "backend 'text' restarted (restart 1)"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_health_checks_raise_no_deprecation_warning(
    mode: Any, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Health checks (ping in legacy, a list in 2026-07-28) run several times without any warning
    from the SDK; a warning raised in the server's thread would fail the check and break the session."""
    router = McpRouter()
    router.mount("text", noisy(mode=mode))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MCPDeprecationWarning)  # raise instead of warn, for any module
        served = serve(router)
        async with connect(served.mcp_url, "modern") as client:
            first = (await client.call_tool("text__pid", {})).structured_content
            await anyio.sleep(1.0)  # about five health checks (health_interval = 0.2 s)
            assert (await client.call_tool("text__pid", {})).structured_content == first  # same process
    assert router.aggregate._links["text"].restarts == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir() and not os.environ.get("CI"),
    reason="counts open descriptors in /proc; CI runs it",
)
async def test_sessions_leave_no_descriptor_open(caplog: pytest.LogCaptureFixture) -> None:
    """Each session's stderr pipe is closed with it (a supervised backend restarting for days must not
    run out of descriptors); the last line the server wrote before its session closed is still logged."""
    caplog.set_level(logging.INFO, logger="mcp_middleware.router.stdio")
    backend = noisy(name="fd")

    async def one_session(index: int) -> None:
        async with backend.open_client() as client:
            await client.call_tool("shout", {"text": f"bye {index}"})

    await one_session(0)  # the SDK's and anyio's own lazily made descriptors exist from here on
    before = len(os.listdir("/proc/self/fd"))
    for index in range(1, 4):
        await one_session(index)
    # A leak stays: three sessions leave three pipes open for good. Anything else this worker process
    # opened meanwhile (a connection a previous test's server is still closing) goes within the wait.
    await until(lambda: len(os.listdir("/proc/self/fd")) <= before, 10)
    assert [line for line in stdio_lines(caplog) if line.startswith("[fd] bye")] == [f"[fd] bye {i}" for i in range(4)]

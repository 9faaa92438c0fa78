"""`mcp-gateway health-check`: every server probed over MCP at once, without serving, as a table or JSON.

The servers below are real: in-process `MCPServer`s (their lifespan run by the probe), a stdio
command, Streamable HTTP servers under uvicorn on 127.0.0.1, and the broken kinds an operator
meets: a port that accepts and never answers, a command that exits at once, a URL that answers an
HTML page, a server whose `tools/list` fails (with terminal escapes in its message) or never ends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from mcp.types import Tool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.gateway.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from tests.conftest import Served, free_port
from tests.servers import build_server
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
STDIO = ROOT / "examples" / "gateway" / "stdio_server.py"
HERE = "tests.gateway.test_health_check"


class _ListingHangs(MCPServer):
    async def list_tools(self) -> list[Tool]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


class _ListingFails(MCPServer):
    async def list_tools(self) -> list[Tool]:
        raise MCPError(-32603, "\x1b[2Jlisting is broken\nsecond line\x07")


def listing_hangs() -> MCPServer:
    """An app whose handshake works and whose `tools/list` never answers."""
    return _ListingHangs("hangs")


def listing_fails() -> MCPServer:
    """An app whose `tools/list` answers a JSON-RPC error, with control characters in its message."""
    return _ListingFails("fails")


class _LegacyOnly:
    """A server of before 2026-07-28, as older SDKs are: `server/discover` is a method it does not know."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        request = json.loads(body or b"null")
        if isinstance(request, dict) and request.get("method") == "server/discover":
            unknown = {"code": -32601, "message": "Method not found"}
            await JSONResponse({"jsonrpc": "2.0", "id": request.get("id"), "error": unknown})(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def legacy_only() -> ASGIApp:
    return _LegacyOnly(build_server().streamable_http_app())


@contextlib.asynccontextmanager
async def _no_database(app: Starlette) -> AsyncIterator[None]:
    raise RuntimeError("database not configured")
    yield


def startup_fails() -> Starlette:
    """An ASGI app whose lifespan startup fails (as an app missing a setting does)."""
    return Starlette(lifespan=_no_database)


async def _html(request: Request) -> HTMLResponse:
    return HTMLResponse("<html><body>Please log in</body></html>")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def run(config: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["health-check", "-c", str(config), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def by_name(out: str) -> dict[str, dict[str, Any]]:
    document = json.loads(out)
    return {server["name"]: server for server in document["servers"]}


def test_every_kind_of_server_is_probed_over_mcp_and_reported(
    tmp_path: Path, serve: Callable[[ASGIApp], Served], capsys: pytest.CaptureFixture[str]
) -> None:
    remote = serve(build_server().streamable_http_app())
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'
        f'[[servers]]\nname = "remote"\nurl = "{remote.mcp_url}"\n'
        f'[[servers]]\nname = "text"\ncommand = ["{{python}}", "{STDIO}"]\n'
        f'[[servers]]\nname = "older"\napp = "{HERE}:legacy_only"\n'
    )
    code, out, err = run(config, "--json", capsys=capsys)
    assert code == EXIT_OK, err
    found = by_name(out)
    assert json.loads(out)["ok"] is True
    kinds = [(s["kind"], s["state"]) for s in found.values()]
    assert kinds == [("app", "healthy"), ("url", "healthy"), ("command", "healthy"), ("app", "healthy")]
    assert {"echo", "slow", "lookup"} <= set(found["demo"]["tools"]) and found["remote"]["tools"] == found["demo"][
        "tools"
    ]
    assert found["text"]["tools"] == ["reverse", "word_count"]
    assert [s["protocol"] for s in found.values()] == ["2026-07-28"] * 3 + ["2025-11-25"]  # `initialize` for it
    assert found["older"]["tools"] == found["demo"]["tools"] and all(s["latency_ms"] > 0 for s in found.values())

    code, out, _ = run(config, capsys=capsys)
    assert code == EXIT_OK
    header, *rows, summary = out.splitlines()
    assert header.split() == ["name", "kind", "state", "latency", "tools", "detail"]
    assert [row.split()[:3] for row in rows] == [
        ["demo", "app", "healthy"],
        ["remote", "url", "healthy"],
        ["text", "command", "healthy"],
        ["older", "app", "healthy"],
    ]
    tools = str(len(found["demo"]["tools"]))
    assert [row.split()[-1] for row in rows] == [tools, tools, "2", tools]
    assert summary == f"{config}: 4 of 4 servers healthy; every required server is healthy"


def test_broken_servers_are_each_reported_while_the_others_still_answer(
    tmp_path: Path,
    serve: Callable[[ASGIApp], Served],
    silent_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    html = serve(Starlette(routes=[Route("/mcp", _html, methods=["GET", "POST", "DELETE"])]))
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'
        f'[[servers]]\nname = "silent"\nurl = "http://127.0.0.1:{silent_port}/mcp"\ntimeout = 2\n'
        '[[servers]]\nname = "exits"\ncommand = ["{python}", "-c", "raise SystemExit(3)"]\ntimeout = 20\n'
        f'[[servers]]\nname = "html"\nurl = "{html.mcp_url}"\ntimeout = 20\n'
        f'[[servers]]\nname = "fails"\napp = "{HERE}:listing_fails"\ntimeout = 20\n'
        f'[[servers]]\nname = "hangs"\napp = "{HERE}:listing_hangs"\ntimeout = 2\n'
        f'[[servers]]\nname = "refused"\nurl = "http://127.0.0.1:{free_port()}/mcp"\ntimeout = 20\n'
        f'[[servers]]\nname = "nostart"\napp = "{HERE}:startup_fails"\ntimeout = 20\n'
    )
    code, out, err = run(config, "--json", capsys=capsys)
    assert code == EXIT_FAILED, err
    found = by_name(out)
    assert list(found) == ["demo", "silent", "exits", "html", "fails", "hangs", "refused", "nostart"]
    states = {name: (s["state"], s["reason"]) for name, s in found.items()}
    assert states["demo"] == ("healthy", "")
    assert states["silent"] == ("unreachable", "no answer within 2 s")  # its own timeout, honoured
    assert states["exits"] == ("unreachable", "connection closed before the handshake (a command that exited?)")
    assert states["html"][0] == "unhealthy" and states["html"][1].startswith("handshake: ")
    assert "text/html" in states["html"][1]
    assert states["fails"] == ("unhealthy", "tools/list: listing is broken second line")
    assert states["hangs"] == ("unhealthy", "tools/list: no answer within 2 s")
    assert states["refused"][0] == "unreachable" and states["refused"][1].startswith("cannot connect: ")
    assert states["nostart"] == ("unhealthy", "startup: RuntimeError: database not configured")
    assert all(s["tools"] == [] for name, s in found.items() if name != "demo")

    code, out, _ = run(config, capsys=capsys)
    assert code == EXIT_FAILED
    assert "\x1b" not in out and "\x07" not in out  # a backend's words never drive the operator's terminal
    rows = out.splitlines()
    assert len(rows) == 1 + 8 + 1, out  # a hostile message with newlines still takes one row
    failing = "silent, exits, html, fails, hangs, refused, nostart"
    assert rows[-1] == f"{config}: 1 of 8 servers healthy; required and not healthy: {failing}"


def test_only_required_servers_decide_the_exit_code(
    tmp_path: Path, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'
        f'[[servers]]\nname = "silent"\nurl = "http://127.0.0.1:{silent_port}/mcp"\noptional = true\n'
        '[[servers]]\nname = "absent"\napp = "no_such_module_h18:app"\noptional = true\n'
    )
    code, out, err = run(config, "--timeout", "1", capsys=capsys)  # over the servers' own 30 s
    assert code == EXIT_OK, err
    rows = {row.split()[0]: row for row in out.splitlines()[1:-1]}
    assert rows["silent"].split()[:3] == ["silent", "url", "unreachable"]
    assert rows["silent"].endswith("no answer within 1 s (optional)")
    assert rows["absent"].endswith("skipped: cannot be imported: no module named 'no_such_module_h18' (optional)")
    assert out.splitlines()[-1] == f"{config}: 1 of 3 servers healthy; every required server is healthy"

    config.write_text(config.read_text().replace("optional = true\n", "", 1))
    code, out, _ = run(config, "--timeout", "1", capsys=capsys)
    assert code == EXIT_FAILED
    assert out.splitlines()[-1].endswith("required and not healthy: silent")


def test_a_config_with_problems_exits_2_with_key_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[servers]]\nname = "demo"\napp = "tests.servers:build_sever"\n')
    code, out, err = run(config, capsys=capsys)
    assert (code, out) == (EXIT_USAGE, "")
    assert "servers[0].app (line 3): cannot be found: tests.servers has no attribute 'build_sever'" in err
    config.write_text('[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\ntimeot = 3\n')
    code, _, err = run(config, capsys=capsys)
    assert code == EXIT_USAGE and "servers[0].timeot (line 4): is not a known setting" in err
    code, _, err = run(tmp_path / "missing.toml", capsys=capsys)
    assert code == EXIT_USAGE and "cannot be read" in err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_positive_number_is_a_usage_error(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["health-check", "-c", str(tmp_path / "gateway.toml"), "--timeout", value])
    assert exited.value.code == EXIT_USAGE
    assert f"must be a number of seconds above zero, not '{value}'" in capsys.readouterr().err


def test_check_config_probe_reports_what_health_check_finds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One probe, two commands: `check-config --probe` names an unhealthy required server as a problem."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[[servers]]\nname = "fails"\napp = "{HERE}:listing_fails"\n')
    assert main(["check-config", "--probe", "-c", str(config)]) == EXIT_USAGE
    assert "servers[0] (line 1): is unhealthy: tools/list: listing is broken second line" in capsys.readouterr().err


def test_the_command_runs_as_a_process_and_leaves_no_child_behind(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[[servers]]\nname = "text"\ncommand = ["{{python}}", "{STDIO}"]\n')
    done = processes.run(
        [sys.executable, "-m", "mcp_middleware.gateway", "health-check", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    [server] = json.loads(done.stdout)["servers"]
    assert (server["name"], server["state"], server["tools"]) == ("text", "healthy", ["reverse", "word_count"])

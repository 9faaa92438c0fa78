"""What a log shipper reads from `mcp-gateway serve`: with `log_format = "json"` every stderr line is one
JSON object (uvicorn's, the SDK's, the access log, warnings), and with `"text"` lines a person reads.

The gateway runs as a real process (`python -m mcp_middleware.gateway serve`) with an in-process
`MCPServer` backend and a remote backend that is down (its breaker opens: a WARNING); the test reads
the process's stderr after it has stopped.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from mcp import Client

from tests.conftest import free_port
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
BOX_DRAWING = re.compile("[\u2500-\u257f]")  # Rich's panels and rules
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
HOSTILE = 'evil\nname\r\x1b[2J\u2028"}{'  # a newline, an ANSI escape, a JSON breaker


def _config(tmp_path: Path, log_format: str | None, down_port: int) -> Path:
    fmt = f'log_format = "{log_format}"\n' if log_format else ""
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
{fmt}[gateway.log_levels]
"mcp" = "info"  # the SDK's own INFO records (one per legacy session), to see them formatted
[[servers]]
name = "local"
app = "tests.servers:build_server"
[[servers]]
name = "down"
url = "http://127.0.0.1:{down_port}/mcp"
aggregate = false
[breaker]
consecutive_failures = 1
[tracing]
""",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def _gateway(config: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The gateway serving until the block ends; yields its base URL and the file its stderr went to."""
    port = free_port()
    stderr = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "mcp_middleware.gateway", "serve", "-c", str(config), "--port", str(port)]
    with (
        stderr.open("wb") as sink,
        processes.running(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink) as process,
    ):
        processes.wait_listening(port, process, stderr)
        yield f"http://127.0.0.1:{port}", stderr


async def _traffic(base: str) -> None:
    """A modern call, a legacy session, a tool error, a hostile tool name, and a call to the down backend."""
    async with Client(f"{base}/mcp", cache=None) as client:
        assert (await client.call_tool("local__echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
        assert (await client.call_tool("local__failing", {"reason": "x"})).is_error
    async with Client(f"{base}/mcp/local", mode="legacy", cache=None) as client:
        assert "echo" in {tool.name for tool in (await client.list_tools()).tools}
    async with httpx2.AsyncClient(timeout=10) as http:
        hostile = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": HOSTILE, "arguments": {}}}
        legacy = {**HEADERS, "mcp-protocol-version": "2025-11-25"}
        assert (await http.post(f"{base}/mcp", json=hostile, headers=legacy)).status_code < 500
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        assert (await http.post(f"{base}/mcp/down", json=init, headers=HEADERS)).status_code == 502  # breaker opens


def _records(stderr: Path) -> list[dict[str, Any]]:
    text = stderr.read_text(encoding="utf-8")
    assert "\x1b" not in text, "no raw escape sequence reaches the log"
    assert not BOX_DRAWING.search(text), "no Rich box drawing"
    records = []
    for line in text.split("\n")[:-1]:  # a shipper splits on "\n" only
        record = orjson.loads(line)  # every line is one JSON object, or this raises
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["ts"]), record["ts"]
        records.append(record)
    assert text.endswith("\n")
    return records


@pytest.mark.anyio
@pytest.mark.parametrize("log_format", ["json", None], ids=["json", "default-when-not-a-tty"])
async def test_every_stderr_line_is_one_json_object(tmp_path: Path, log_format: str | None) -> None:
    config = _config(tmp_path, log_format, down_port=free_port())
    with _gateway(config, tmp_path) as (base, stderr):
        await _traffic(base)
    records = _records(stderr)
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "mcp_middleware.access", "mcp_middleware.breaker"} <= loggers, loggers
    assert "mcp.server.streamable_http_manager" in loggers  # the SDK's own records, through the same formatter

    access = [r for r in records if r["logger"] == "mcp_middleware.access"]
    echo = next(r for r in access if r.get("mcp.target") == "local__echo")
    assert echo["message"] == "tools/call local__echo 200"  # a short message: the fields are the object itself
    assert echo["level"] == "INFO" and echo["http.status"] == 200 and echo["mcp.era"] == "modern"
    assert {"component": "router", "outcome": "routed", "server": "local", "method": "tools/call"} in echo["decisions"]
    assert "mcp" not in echo and not any(
        isinstance(r["message"], str) and r["message"].startswith("{") for r in records
    )
    assert any((r.get("mcp.target") or "").startswith("evil\nname") for r in access)  # escaped, still one line
    assert any(r.get("http.path") == "/mcp/down" and r["http.status"] == 502 for r in access)

    warning = next(r for r in records if r["logger"] == "mcp_middleware.breaker")
    assert warning["level"] == "WARNING" and warning["message"].startswith("circuit breaker 'down' open")
    sdk = [r for r in records if r["logger"] == "mcp.server.streamable_http_manager"]
    assert any(r["message"].startswith("Created new transport with session ID: sha256:") for r in sdk), sdk
    assert any(r["message"] == "Application startup complete." for r in records)


@pytest.mark.anyio
async def test_text_format_is_one_readable_line_per_record(tmp_path: Path) -> None:
    config = _config(tmp_path, "text", down_port=free_port())
    with _gateway(config, tmp_path) as (base, stderr):
        await _traffic(base)
    text = stderr.read_text(encoding="utf-8")
    assert not BOX_DRAWING.search(text)
    lines = [line for line in text.split("\n") if line]
    shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \S")
    starts = [line for line in lines if shape.match(line)]
    # Only a traceback's lines (the failing tool's, logged by the SDK at ERROR) may follow a record's first line.
    assert all(
        shape.match(line) or line.startswith((" ", "Traceback", "ValueError", "mcp.", "The above")) for line in lines
    )
    assert any(" WARNING mcp_middleware.breaker circuit breaker 'down' open" in line for line in starts)
    access = [line for line in starts if " INFO mcp_middleware.access " in line]
    assert access and all(orjson.loads(line.split(" mcp_middleware.access ", 1)[1]) for line in access)
    assert any(" INFO uvicorn.error Application startup complete." in line for line in starts)

"""The assembled gateway end to end: real backends of every kind, real clients in both eras, every middleware on."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.types import ASGIApp

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, serve_app
from tests.servers import build_server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gw-test-token"


def gateway_config(tmp_path: Path, remote_url: str, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
prefix = "/mcp"

[[servers]]
name = "local"
app = "tests.servers:build_server"

[[servers]]
name = "remote"
url = "{remote_url}"

[[servers]]
name = "text"
command = ["{{python}}", "{ROOT / "examples" / "gateway" / "stdio_server.py"}"]

[[servers]]
name = "hidden"
app = "tests.servers:build_server"
mount = false

[auth]
mode = "static"
[auth.tokens]
"${{env:GW_TEST_TOKEN}}" = ["mcp"]

[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 1000
rate = 1000

[breaker]
consecutive_failures = 5

[cache]
ttl = 30

[tracing]
access_log = false
{extra}
""",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def running_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = ""
) -> Iterator[tuple[Gateway, Served]]:
    monkeypatch.setenv("GW_TEST_TOKEN", TOKEN)
    with serve_app(build_server().streamable_http_app()) as remote:
        config = load_config(gateway_config(tmp_path, remote.mcp_url, extra))
        gateway = build_gateway(config)
        with serve_app(gateway.app) as served:
            yield gateway, served


@contextlib.asynccontextmanager
async def client(url: str, era: Era, token: str | None = TOKEN) -> AsyncIterator[Client]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        streams = streamable_http_client(url, http_client=http)
        async with Client(streams, mode="legacy" if era == "legacy" else "auto", cache=None) as session:
            yield session


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, Served]]:
    with running_gateway(tmp_path, monkeypatch) as running:
        yield running


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_every_kind_of_backend_through_its_path_mount(gateway: tuple[Gateway, Served], era: Era) -> None:
    _, served = gateway
    for mount, tool, arguments, expected in [
        ("local", "echo", {"text": "hi"}, "hi"),
        ("remote", "echo", {"text": "far"}, "far"),
        ("text", "reverse", {"text": "abc"}, "cba"),
    ]:
        async with client(f"{served.base}/mcp/{mount}", era) as session:
            result = await session.call_tool(tool, arguments)
            assert result.content[0].text == expected, mount  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_the_aggregate_lists_and_routes_every_backend(gateway: tuple[Gateway, Served], era: Era) -> None:
    _, served = gateway
    async with client(f"{served.base}/mcp", era) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"local__echo", "remote__echo", "text__reverse", "hidden__echo"} <= names
        result = await session.call_tool("text__word_count", {"text": "one two three"})
        assert result.content[0].text == "3"  # type: ignore[union-attr]


def test_without_a_token_the_gateway_challenges(gateway: tuple[Gateway, Served]) -> None:
    _, served = gateway
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}}
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    for path in ("/mcp/local", "/mcp"):
        response = httpx2.post(f"{served.base}{path}", json=body, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["id"] == 5


def test_operations_endpoints(gateway: tuple[Gateway, Served]) -> None:
    _, served = gateway
    assert httpx2.get(f"{served.base}/healthz").json()["status"] == "ok"
    deadline = time.monotonic() + 30  # the stdio child may still be starting on a loaded machine: not ready yet
    ready = httpx2.get(f"{served.base}/readyz")
    while ready.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = httpx2.get(f"{served.base}/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"backends", "breakers", "stores"}
    metrics = httpx2.get(f"{served.base}/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]


def test_an_unknown_mount_is_a_json_rpc_404(gateway: tuple[Gateway, Served]) -> None:
    _, served = gateway
    headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    for path in ("/mcp/nope", "/mcp/hidden"):  # "hidden" is in the aggregate only (mount = false)
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        response = httpx2.post(f"{served.base}{path}", json=ping, headers=headers)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No MCP server is mounted at {path}"


def test_a_server_that_cannot_be_loaded_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_middleware.gateway.config import ConfigError, parse_config

    config = parse_config('[[servers]]\nname = "x"\napp = "no_such_module_here:server"\n')
    with pytest.raises(ConfigError) as failed:
        build_gateway(config)
    [problem] = failed.value.problems
    assert (problem.path, problem.line) == ("servers[0].app", 3)
    assert problem.message == "cannot be imported: no module named 'no_such_module_here'"
    optional = parse_config(
        '[[servers]]\nname = "x"\napp = "no_such_module_here:server"\noptional = true\n'
        '[[servers]]\nname = "y"\napp = "tests.servers:build_server"\n'
    )
    assert build_gateway(optional).skipped == ["x: cannot be imported: no module named 'no_such_module_here'"]


_unused: Callable[[ASGIApp], Any] | None = None
del _unused, sys


def test_readiness_reports_an_open_breaker_and_stays_ready_while_others_serve(tmp_path: Path) -> None:
    from mcp_middleware.gateway.config import parse_config
    from tests.conftest import free_port

    dead = free_port()  # nothing listens there
    config = parse_config(
        f"""
[[servers]]
name = "live"
app = "tests.servers:build_server"
[[servers]]
name = "dead"
url = "http://127.0.0.1:{dead}/mcp"
optional = true  # a required backend that never started would keep the gateway not ready
[aggregate]
enabled = false
[breaker]
consecutive_failures = 2
open_for = 60
[tracing]
access_log = false
"""
    )
    built = build_gateway(config)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    with serve_app(built.app) as served:
        statuses = [httpx2.post(f"{served.base}/mcp/dead", json=body, headers=headers).status_code for _ in range(3)]
        assert statuses[0] == 502 and statuses[-1] == 503  # unreachable, then the breaker fails fast
        ready = httpx2.get(f"{served.base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["breakers"]["detail"] == "dead: open"
        assert ready.json()["checks"]["backends"]["detail"].startswith("dead: unreachable")
        assert httpx2.post(f"{served.base}/mcp/live", json=body, headers=headers).status_code == 200
        metrics = httpx2.get(f"{served.base}/metrics").text  # the transition reached the tracing metrics
        assert re.search(r"mcp_middleware_breaker_transitions_total\{[^}]*state=\"open\"[^}]*\} 1\.0", metrics), [
            line for line in metrics.splitlines() if "breaker" in line
        ]


@pytest.mark.anyio
@pytest.mark.parametrize("freeze", [True, False])
async def test_start_up_objects_are_frozen_out_of_the_collectors_scans(
    freeze: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """`[gateway] gc_freeze` (on by default) freezes what start-up built, and unfreezes it on shutdown.

    The freeze is process-wide: what this gateway did is told by its own log line, not by the count alone
    (another test's server in this worker process may be starting or stopping meanwhile)."""
    import gc
    import logging

    from mcp_middleware.core.lifespan import run_lifespan
    from mcp_middleware.gateway.config import parse_config

    caplog.set_level(logging.INFO, "mcp_middleware.gateway")
    setting = "" if freeze else "[gateway]\ngc_freeze = false\n"
    config = parse_config(
        f'{setting}[[servers]]\nname = "live"\napp = "tests.servers:build_server"\n[tracing]\naccess_log = false\n'
    )
    assert config.gateway.gc_freeze is freeze
    before = gc.get_freeze_count()
    async with run_lifespan(build_gateway(config).app):
        frozen = gc.get_freeze_count()
    froze = [r.getMessage() for r in caplog.records if "start-up objects out of the garbage" in r.getMessage()]
    if freeze:
        assert before == 0  # nothing else froze first (else this gateway leaves the freeze to it)
        assert len(froze) == 1 and frozen > 10_000  # the SDK, pydantic's schemas and the server at least
        assert gc.get_freeze_count() == 0  # and unfrozen on shutdown
    else:
        assert froze == []


def test_gc_freeze_must_be_true_or_false() -> None:
    from mcp_middleware.gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as raised:
        parse_config('[gateway]\ngc_freeze = "yes"\n[[servers]]\nname = "x"\napp = "tests.servers:build_server"\n')
    assert "gc_freeze" in str(raised.value)

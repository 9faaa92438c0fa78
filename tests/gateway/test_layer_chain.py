"""The gateway's layers hand a request on without a frame of their own where they can: its outermost app is a plain
call that servers still take for an ASGI 3 coroutine function, and `mcp-gateway serve` serves through it."""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path

import anyio
import httpx2
import orjson
import pytest
import uvicorn

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from mcp_middleware.gateway.lifespan import GatewayLifespan
from tests.conftest import ERAS, Era, connect, free_port, serve_app
from tests.support import processes

_CONFIG = """
[[servers]]
name = "local"
app = "tests.servers:build_server"
"""


def test_the_outermost_app_is_taken_for_asgi3_by_uvicorn() -> None:
    app = build_gateway(parse_config(_CONFIG)).app
    if sys.version_info >= (3, 12):  # a plain call, marked: no frame of its own (3.11 cannot mark it for `inspect`)
        assert not type(app).__call__.__code__.co_flags & inspect.CO_COROUTINE
    assert asyncio.iscoroutinefunction(app.__call__)  # what uvicorn asks before 3.14
    assert inspect.iscoroutinefunction(app.__call__)  # what it asks from 3.14 on, and hypercorn on every version
    config = uvicorn.Config(app)
    config.load()
    assert config.interface == "asgi3"
    factory = uvicorn.Config(lambda: app, factory=True)  # (the workers' factory: the same check on what it returns)
    factory.load()
    assert factory.interface == "asgi3"


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_the_served_gateway_answers_through_its_plain_outermost_call(tmp_path: Path, era: Era) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(_CONFIG, encoding="utf-8")
    port = free_port()
    process = await anyio.to_thread.run_sync(processes.start_gateway, config, port, tmp_path / "gateway.log")
    try:
        async with connect(f"http://127.0.0.1:{port}/mcp/local", era) as client:
            result = await client.call_tool("echo", {"text": "through"})
            assert result.content[0].text == "through"  # type: ignore[union-attr]
    finally:
        processes.stop(process)


_TRACED = (
    _CONFIG
    + """
[tracing]
access_log = false
"""
)


def _answers(base: str, paths: list[str]) -> list[tuple[object, ...]]:
    """What a client sees of each path, for each method (values that differ between two servers left out)."""
    seen: list[tuple[object, ...]] = []
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}})
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/list",
    }
    with httpx2.Client(base_url=base, timeout=30) as http:
        for path in paths:
            for method in ("GET", "HEAD", "POST", "DELETE"):
                response = http.request(method, path, content=body if method == "POST" else None, headers=headers)
                kind = response.headers.get("content-type", "")
                shown: object = response.content
                if kind.startswith("application/json") and response.content:
                    shown = orjson.loads(response.content)
                    if isinstance(shown, dict):  # uptime and check timings differ from one server to another
                        shown = {key: value for key, value in shown.items() if key not in ("uptime", "checks")}
                elif kind.startswith("text/plain; version="):  # the Prometheus exposition: values differ
                    shown = "metrics"
                seen.append((path, method, response.status_code, kind, response.headers.get("allow"), shown))
    return seen


def test_requests_past_operations_and_metrics_are_answered_as_through_them() -> None:
    """The outermost call hands a request for any other path straight to the layer inside operations and /metrics;
    a twin gateway without that shortcut (every request through both layers) answers every path the same."""
    paths = ["/healthz", "/readyz", "/metrics", "/metrics/", "/mcp/local", "/mcp/nothing", "/healthz/x", "/"]
    for root_path, asked in (("", paths), ("/gw", [*(f"/gw{path}" for path in paths), *paths])):
        shortcut = build_gateway(parse_config(_TRACED))  # (an app's lifespan runs once: a pair for each server)
        general = build_gateway(parse_config(_TRACED))
        assert isinstance(general.app, GatewayLifespan)
        general.app.bypass((), general.app.app)  # the general route: operations, then /metrics, then tracing
        with serve_app(shortcut.app, root_path=root_path) as a, serve_app(general.app, root_path=root_path) as b:
            assert _answers(a.base, asked) == _answers(b.base, asked)

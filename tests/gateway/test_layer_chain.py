"""The gateway's layers hand a request on without a frame of their own where they can: its outermost app is a plain
call that servers still take for an ASGI 3 coroutine function, and `mcp-gateway serve` serves through it."""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path

import anyio
import pytest
import uvicorn

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from tests.conftest import ERAS, Era, connect, free_port
from tests.support import processes

_CONFIG = """
[[servers]]
name = "local"
app = "tests.servers:build_server"
"""


def test_the_outermost_app_is_taken_for_asgi3_by_uvicorn() -> None:
    app = build_gateway(parse_config(_CONFIG)).app
    assert not type(app).__call__.__code__.co_flags & inspect.CO_COROUTINE  # a plain call: no frame of its own
    assert asyncio.iscoroutinefunction(app.__call__)  # what uvicorn asks before 3.14
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(app.__call__)  # what it asks from 3.14 on
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

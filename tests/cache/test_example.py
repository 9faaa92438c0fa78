"""The example the docs point to serves MCP in both eras, with the cache doing what it says."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from mcp import types

from tests.cache.backends import connect_as
from tests.conftest import ERAS, Era
from tests.support.decisions import DecisionRecorder

pytestmark = pytest.mark.anyio


def text(result: types.CallToolResult) -> str:
    assert isinstance(result.content[0], types.TextContent)
    return result.content[0].text


@pytest.mark.parametrize("era", ERAS)
async def test_cache_example(era: Era, serve: Any) -> None:
    module = importlib.reload(importlib.import_module("examples.cache_server"))  # an app's lifespan runs once
    log = DecisionRecorder(module.app)
    served = serve(log)
    async with connect_as(served.mcp_url, era) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["forecast", "set_forecast"]
        assert [text(await client.call_tool("forecast", {"city": "Oslo"})) for _ in range(2)] == ["snow", "snow"]
        await client.list_tools()
        assert text(await client.call_tool("set_forecast", {"city": "Oslo", "weather": "rain"})) == "Oslo: rain"
        # the opted-in forecast stays cached for its 30 s, as configured
        assert text(await client.call_tool("forecast", {"city": "Oslo"})) == "snow"
    # the second forecast, the second tools/list, the last forecast; set_forecast is not selected at all
    assert log.outcomes("cache").count("hit") == 3

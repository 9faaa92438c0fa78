"""The rate-limit examples the docs point to do what their docstrings say, in both eras."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from tests.conftest import ERAS, Era, RedisServer, connect

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_the_search_bucket_refuses_the_eleventh_quick_search_but_not_other_tools(era: Era, serve: Any) -> None:
    app = importlib.reload(importlib.import_module("examples.ratelimit_server")).app  # fresh: one lifespan per app
    served = serve(app)
    async with connect(served.mcp_url, era) as client:
        for n in range(10):
            await client.call_tool("search_docs" if n % 2 else "search_web", {"query": "q"})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("search_docs", {"query": "q"})
        assert refused.value.code == ErrorCode.RATE_LIMITED
        assert refused.value.error.data["policy"] == "search"
        assert (await client.call_tool("summarize", {"text": "short"})).content[0].text == "short"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_the_redis_example_shares_its_buckets_between_instances(
    era: Era, serve: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    module = importlib.import_module("examples.ratelimit_redis")
    first = serve(importlib.reload(module).app)
    second = serve(importlib.reload(module).app)
    async with connect(first.mcp_url, era) as one, connect(second.mcp_url, era) as two:
        for n in range(5):
            await (one if n % 2 else two).call_tool("search", {"query": "q"})
        with pytest.raises(MCPError) as refused:
            await one.call_tool("search", {"query": "q"})
        assert refused.value.error.data["policy"] == "search"
        assert (await two.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"  # type: ignore[union-attr]

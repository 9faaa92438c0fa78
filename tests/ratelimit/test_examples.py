"""The rate-limit examples the docs point to do what their docstrings say, in both eras."""

from __future__ import annotations

import importlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from tests.conftest import ERAS, Era, RedisServer, connect

pytestmark = pytest.mark.anyio


async def until_refused(call: Callable[[int], Awaitable[object]]) -> tuple[int, MCPError, float]:
    """Call as fast as possible until refused: (calls admitted, the refusal, seconds it took)."""
    started = time.monotonic()
    for n in range(100):
        try:
            await call(n)
        except MCPError as exc:
            return n, exc, time.monotonic() - started
    raise AssertionError("never refused")


@pytest.mark.parametrize("era", ERAS)
async def test_the_search_bucket_refuses_the_eleventh_quick_search_but_not_other_tools(era: Era, serve: Any) -> None:
    app = importlib.reload(importlib.import_module("examples.ratelimit_server")).app  # fresh: one lifespan per app
    served = serve(app)
    async with connect(served.mcp_url, era) as client:
        admitted, refused, elapsed = await until_refused(
            lambda n: client.call_tool("search_docs" if n % 2 else "search_web", {"query": "q"})
        )
        # A burst of 10, plus what refilled at 5/s while the calls ran (this machine may be slow).
        assert 10 <= admitted <= 10 + 5 * elapsed + 1
        assert refused.code == ErrorCode.RATE_LIMITED
        assert refused.error.data["policy"] == "search"
        assert (await client.call_tool("summarize", {"text": "short"})).content[0].text == "short"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_the_redis_example_shares_its_buckets_between_instances(
    era: Era, serve: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_TIMEOUT", "5")  # a loaded test machine must not look like an outage
    module = importlib.import_module("examples.ratelimit_redis")
    first = serve(importlib.reload(module).app)
    second = serve(importlib.reload(module).app)
    async with connect(first.mcp_url, era) as one, connect(second.mcp_url, era) as two:
        admitted, refused, elapsed = await until_refused(
            lambda n: (one if n % 2 else two).call_tool("search", {"query": "q"})
        )
        # One bucket for both instances: a burst of 5 plus the 2/s refill, not 2 x 5.
        assert 5 <= admitted <= 5 + 2 * elapsed + 1
        assert refused.error.data["policy"] == "search"
        assert (await two.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"  # type: ignore[union-attr]

"""Stale-if-error: within the grace, an expired entry stands in for a failed backend, marked stale in `_meta`."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.cache import CACHE_META_KEY
from tests.cache.backends import FlakyApp, connect_as
from tests.cache.helpers import cached_stack, modern_post
from tests.conftest import ERAS, Era
from tests.support.requests import legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["unavailable", "raise"])
async def test_expired_entry_stands_in_when_the_backend_fails(mode: str, serve: Any) -> None:
    stack = cached_stack(serve, ttl=0.2, stale_grace=30, inner=FlakyApp)
    flaky: FlakyApp = stack.cache.app  # type: ignore[assignment]
    async with httpx2.AsyncClient() as http:
        fresh = await modern_post(http, stack.url, "tools/list", 1)
        await anyio.sleep(0.3)
        flaky.mode = mode
        stale = await modern_post(http, stack.url, "tools/list", 2)
        flaky.mode = None
        recovered = await modern_post(http, stack.url, "tools/list", 3)
    assert stale.status_code == 200 and stale.headers["x-mcp-cache"] == "stale"
    body = stale.json()
    assert body["id"] == 2
    assert body["result"]["tools"] == fresh.json()["result"]["tools"]
    assert body["result"]["_meta"][CACHE_META_KEY]["stale"] is True
    assert body["result"]["_meta"][CACHE_META_KEY]["ageMs"] >= 200
    assert body["result"]["ttlMs"] == 0  # nobody should keep a stale answer
    assert recovered.headers["x-mcp-cache"] == "miss" and CACHE_META_KEY not in recovered.json()["result"]["_meta"]
    assert "stale" in stack.log.outcomes("cache")


@pytest.mark.parametrize("era", ERAS)
async def test_stale_answer_reaches_the_sdk_client(era: Era, serve: Any) -> None:
    stack = cached_stack(serve, ttl=0.2, stale_grace=30, inner=FlakyApp)
    flaky: FlakyApp = stack.cache.app  # type: ignore[assignment]
    async with connect_as(stack.url, era, "alice") as client:
        fresh = await client.list_prompts()
        await anyio.sleep(0.3)
        flaky.mode = "unavailable"
        stale = await client.list_prompts()
        flaky.mode = None
    assert [p.name for p in stale.prompts] == [p.name for p in fresh.prompts]
    assert stale.meta is not None and stale.meta[CACHE_META_KEY]["stale"] is True


async def test_legacy_stream_error_is_replaced_by_the_stale_answer(serve: Any) -> None:
    """A legacy failure arrives as an error event inside a 200 stream: held until that first event, then replaced."""
    stack = cached_stack(serve, ttl=0.2, stale_grace=30, inner=FlakyApp)
    flaky: FlakyApp = stack.cache.app  # type: ignore[assignment]
    async with httpx2.AsyncClient() as http:
        session = await legacy_session(http, stack.url)
        fresh = await legacy_post(http, stack.url, session, "resources/list", 1)
        await anyio.sleep(0.3)
        flaky.mode = "stream_error"
        stale = await legacy_post(http, stack.url, session, "resources/list", 2)
    assert stale.headers["content-type"] == "text/event-stream" and stale.headers["x-mcp-cache"] == "stale"
    message = json_of(stale)
    assert message["id"] == 2
    assert message["result"]["resources"] == json_of(fresh)["result"]["resources"]
    assert message["result"]["_meta"][CACHE_META_KEY]["stale"] is True


async def test_tool_errors_are_answers_not_failures(serve: Any) -> None:
    """A tool error (isError) is the backend's real answer: it is passed on, never replaced by a stale one."""
    stack = cached_stack(serve, ttl=0.2, stale_grace=30, rules={"tools/call:lookup": 0.2})
    async with httpx2.AsyncClient() as http:
        session = await legacy_session(http, stack.url)
        await legacy_post(http, stack.url, session, "tools/list", 1)
        params = {"name": "lookup", "arguments": {"key": "k"}}
        fresh = await legacy_post(http, stack.url, session, "tools/call", 2, params)
        await anyio.sleep(0.3)
        stack.server.remove_tool("lookup")
        after = await legacy_post(http, stack.url, session, "tools/call", 3, params)
    assert json_of(fresh)["result"]["content"][0]["text"] == "k@1"
    assert json_of(after)["result"].get("isError") is True
    assert after.headers["x-mcp-cache"] == "miss"


async def test_past_the_grace_the_failure_reaches_the_client(serve: Any) -> None:
    stack = cached_stack(serve, ttl=0.1, stale_grace=0.1, inner=FlakyApp)
    flaky: FlakyApp = stack.cache.app  # type: ignore[assignment]
    async with connect_as(stack.url, "modern", "alice") as client:
        await client.list_prompts()
        await anyio.sleep(0.3)
        flaky.mode = "unavailable"
        with pytest.raises(MCPError) as failed:
            await client.list_prompts()
    assert failed.value.code == -32015


async def test_without_grace_nothing_stale_is_served(serve: Any) -> None:
    stack = cached_stack(serve, ttl=0.1, inner=FlakyApp)
    flaky: FlakyApp = stack.cache.app  # type: ignore[assignment]
    async with httpx2.AsyncClient() as http:
        await modern_post(http, stack.url, "tools/list", 1)
        await anyio.sleep(0.2)
        flaky.mode = "unavailable"
        failed = await modern_post(http, stack.url, "tools/list", 2)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == -32015

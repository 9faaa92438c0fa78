"""Hits never reach the backend, carry the request's own id, and come in the form the client asked for."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp import types

from tests.cache.backends import build_backend, connect_as
from tests.cache.helpers import cached_stack, modern_post
from tests.conftest import ERAS, Era
from tests.support.requests import LEGACY, legacy_post, legacy_session
from tests.support.sse import json_of, sse_messages

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_repeated_lists_and_reads_are_answered_without_the_backend(era: Era, serve: Any) -> None:
    stack = cached_stack(serve)
    async with connect_as(stack.url, era, "alice") as client:
        first = [
            await client.list_tools(),
            await client.list_prompts(),
            await client.list_resources(),
            await client.list_resource_templates(),
            await client.read_resource("demo://counter"),
        ]
        for _ in range(2):
            again = [
                await client.list_tools(),
                await client.list_prompts(),
                await client.list_resources(),
                await client.list_resource_templates(),
                await client.read_resource("demo://counter"),
            ]
            assert [r.model_dump(exclude={"ttl_ms"}) for r in again] == [
                r.model_dump(exclude={"ttl_ms"}) for r in first
            ]
    for method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"):
        assert stack.calls[method] == 1, (method, stack.calls)
    assert stack.log.outcomes("cache").count("hit") == 10


async def test_server_discover_is_cached_across_connections(serve: Any) -> None:
    stack = cached_stack(serve)
    for _ in range(3):
        async with connect_as(stack.url, "modern", "alice") as client:  # each connection probes server/discover
            assert "lookup" in [t.name for t in (await client.list_tools()).tools]
    assert stack.calls["server/discover"] == 1
    assert stack.calls["tools/list"] == 1


async def test_modern_hit_is_json_with_the_request_id_and_the_time_left(serve: Any) -> None:
    stack = cached_stack(serve)
    async with httpx2.AsyncClient() as http:
        miss = await modern_post(http, stack.url, "tools/list", 101)
        hit = await modern_post(http, stack.url, "tools/list", "second")
    assert stack.calls["tools/list"] == 1
    assert (miss.status_code, hit.status_code) == (200, 200)
    assert miss.headers["x-mcp-cache"] == "miss" and hit.headers["x-mcp-cache"] == "hit"
    assert hit.headers["content-type"] == "application/json"
    assert int(hit.headers["content-length"]) == len(hit.content)
    assert miss.json()["id"] == 101 and hit.json()["id"] == "second"
    result, cached = miss.json()["result"], hit.json()["result"]
    assert cached["tools"] == result["tools"] and cached["cacheScope"] == "public"
    assert cached["resultType"] == "complete"
    assert 0 < cached["ttlMs"] <= result["ttlMs"] == 60_000  # a hit says how long it stays fresh, not the full ttl


async def test_legacy_hit_is_an_event_stream_on_the_same_session(serve: Any) -> None:
    stack = cached_stack(serve)
    async with httpx2.AsyncClient() as http:
        session = await legacy_session(http, stack.url)
        miss = await legacy_post(http, stack.url, session, "prompts/list", 1)
        hit = await legacy_post(http, stack.url, session, "prompts/list", 2)
    assert stack.calls["prompts/list"] == 1
    assert miss.headers["content-type"].startswith("text/event-stream")
    assert hit.headers["content-type"] == "text/event-stream"
    assert hit.headers["mcp-session-id"] == session
    assert hit.headers["cache-control"] == "no-cache, no-transform"
    assert hit.headers["x-mcp-cache"] == "hit"
    assert [m["id"] for m in sse_messages(hit.text)] == [2]
    assert json_of(hit)["result"] == json_of(miss)["result"]
    assert "ttlMs" not in json_of(hit)["result"]  # legacy results carry no cache hints


async def test_legacy_json_backend_gets_json_hits(serve: Any) -> None:
    stack = cached_stack(serve, json_response=True)
    async with httpx2.AsyncClient() as http:
        session = await legacy_session(http, stack.url)
        await legacy_post(http, stack.url, session, "tools/list", 1)
        hit = await legacy_post(http, stack.url, session, "tools/list", 2)
        only_json = await legacy_post(http, stack.url, session, "tools/list", 3, accept="application/json")
    assert stack.calls["tools/list"] == 1
    for response, request_id in ((hit, 2), (only_json, 3)):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["mcp-session-id"] == session
        assert response.json()["id"] == request_id


async def test_legacy_hit_needs_a_session_the_backend_knows(serve: Any) -> None:
    """A cached answer must not make a dead or foreign session look alive."""
    stack = cached_stack(serve)
    async with httpx2.AsyncClient() as http:
        session = await legacy_session(http, stack.url)
        assert (await legacy_post(http, stack.url, session, "tools/list", 1)).status_code == 200
        unknown = await legacy_post(http, stack.url, "not-a-session", "tools/list", 2)
        assert unknown.status_code == 404  # the backend's answer, not a hit
        assert await http.delete(stack.url, headers={"mcp-session-id": session, "mcp-protocol-version": LEGACY})
        ended = await legacy_post(http, stack.url, session, "tools/list", 3)
        assert ended.status_code == 404  # terminated: the backend says so, the cache does not paper over it
    assert stack.calls["tools/list"] == 3


@pytest.mark.parametrize("era", ERAS)
async def test_streamed_answer_is_cached_and_progress_still_streams(era: Era, serve: Any) -> None:
    """A read-only tool that reports progress is answered as an event stream; its result is cached."""
    stack = cached_stack(serve, rules={"tools/call:progress_lookup": 30})
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with connect_as(stack.url, era, "alice") as client:
        await client.list_tools()  # the cache learns which tools are read-only
        first = await client.call_tool("progress_lookup", {"key": "k"}, progress_callback=on_progress)
        second = await client.call_tool("progress_lookup", {"key": "k"}, progress_callback=on_progress)
    assert isinstance(first.content[0], types.TextContent) and isinstance(second.content[0], types.TextContent)
    assert first.content[0].text == second.content[0].text == "k@1"
    assert seen == [1.0]  # progress came through on the miss; a hit has nothing to report
    assert stack.calls["tools/call:progress_lookup"] == 1


async def test_modern_streamed_miss_then_json_hit_on_the_wire(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:progress_lookup": 30})
    async with httpx2.AsyncClient() as http:
        await modern_post(http, stack.url, "tools/list", 1)
        params = {"name": "progress_lookup", "arguments": {"key": "w"}}
        meta_progress = {**params, "_meta": {"progressToken": "p"}}
        miss = await modern_post(http, stack.url, "tools/call", 2, meta_progress)
        hit = await modern_post(http, stack.url, "tools/call", 3, params)
    assert miss.headers["content-type"] == "text/event-stream"
    assert [m.get("method") for m in sse_messages(miss.text)] == ["notifications/progress", None]
    assert hit.headers["content-type"] == "application/json"  # no notifications: a modern server answers JSON
    assert hit.json()["id"] == 3
    assert hit.json()["result"]["content"] == json_of(miss)["result"]["content"]


async def test_same_backend_twice_different_servers_do_not_share(serve: Any) -> None:
    """Entries are per mount: two backends at different paths never answer for each other."""
    first, second = cached_stack(serve, server=build_backend()), cached_stack(serve, server=build_backend())
    async with httpx2.AsyncClient() as http:
        assert (await modern_post(http, first.url, "resources/list", 1)).status_code == 200
        assert (await modern_post(http, second.url, "resources/list", 1)).status_code == 200
    assert first.calls["resources/list"] == second.calls["resources/list"] == 1

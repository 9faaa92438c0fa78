"""What is cached and what never is: opt-in tools and prompts, errors, MRTR, initialize, upstream ttlMs, cursors."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError, types
from mcp.server.lowlevel import Server

from tests.cache.backends import PAGES, build_backend, build_paged_backend, connect_as
from tests.cache.helpers import cached_stack, modern_post
from tests.conftest import ERAS, Era
from tests.support.requests import legacy_post, legacy_session
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def text(result: types.CallToolResult | types.GetPromptResult) -> str:
    content = result.content[0] if isinstance(result, types.CallToolResult) else result.messages[0].content
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("era", ERAS)
async def test_tool_calls_are_cached_only_when_opted_in_and_read_only(era: Era, serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:lookup": 30, "tools/call:echo": 30})
    async with connect_as(stack.url, era, "alice") as client:
        await client.list_tools()  # learned: lookup is readOnlyHint, echo is not
        assert [text(await client.call_tool("lookup", {"key": "k"})) for _ in range(3)] == ["k@1"] * 3
        assert [text(await client.call_tool("echo", {"text": "hi"})) for _ in range(2)] == ["hi", "hi"]
        await client.call_tool("whoami", {})  # read-only but not opted in
        await client.call_tool("whoami", {})
    assert stack.calls["tools/call:lookup"] == 1
    assert stack.calls["tools/call:echo"] == 2  # opted in, but not read-only and not allow-listed
    assert stack.calls["tools/call:whoami"] == 2
    assert ("bypass", "not_read_only") in [(d.outcome, d.attributes.get("reason")) for d in stack.log.decisions]


async def test_allow_listed_tool_is_cached_without_the_annotation(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call": 30}, allow_tools=["ec*"])
    async with connect_as(stack.url, "modern", "alice") as client:
        assert [text(await client.call_tool("echo", {"text": "hi"})) for _ in range(3)] == ["hi"] * 3
        assert text(await client.call_tool("echo", {"text": "other"})) == "other"  # other arguments, other key
    assert stack.calls["tools/call:echo"] == 2


async def test_read_only_hint_can_be_distrusted(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call": 30}, trust_read_only_hint=False)
    async with connect_as(stack.url, "modern", "alice") as client:
        await client.list_tools()
        assert [text(await client.call_tool("lookup", {"key": "k"})) for _ in range(2)] == ["k@1", "k@2"]


@pytest.mark.parametrize("era", ERAS)
async def test_prompts_get_is_cached_only_when_opted_in(era: Era, serve: Any) -> None:
    plain, opted = cached_stack(serve), cached_stack(serve, rules={"prompts/get:gr*": 30})
    for stack in (plain, opted):
        async with connect_as(stack.url, era, "alice") as client:
            got = [text(await client.get_prompt("greet", {"name": "x"})) for _ in range(2)]
        assert got == (
            ["Say hello to x (v1).", "Say hello to x (v2)."] if stack is plain else ["Say hello to x (v1)."] * 2
        )


@pytest.mark.parametrize("era", ERAS)
async def test_errors_are_never_cached(era: Era, serve: Any) -> None:
    stack = cached_stack(serve)
    async with connect_as(stack.url, era, "alice") as client:
        for _ in range(2):
            with pytest.raises(MCPError):
                await client.read_resource("demo://missing")
    assert stack.calls["resources/read:demo://missing"] == 2

    def unstored() -> list[object]:
        return [d.attributes.get("reason") for d in stack.log.decisions if d.attributes.get("stored") is False]

    # a miss is decided right after its last byte went out, on the server's thread: wait for it
    await until(lambda: len(unstored()) == 2)
    assert unstored() == ["error", "error"]


async def test_tool_errors_are_never_cached(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call": 30}, allow_tools=["echo"])
    async with connect_as(stack.url, "modern", "alice") as client:
        for _ in range(2):  # a missing argument is a tool error (isError), not a protocol error
            assert (await client.call_tool("echo", {})).is_error
    assert stack.calls["tools/call:echo"] == 2


def build_mrtr_backend() -> Server[Any]:
    """`ask` answers input_required until the client retries with inputResponses/requestState."""

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
        if params.request_state is None:
            return types.InputRequiredResult(request_state="asked")
        return types.CallToolResult(content=[types.TextContent(type="text", text="answered")])

    return Server("mrtr", on_call_tool=call_tool)


async def test_input_required_and_retries_are_never_cached(serve: Any) -> None:
    stack = cached_stack(serve, build_mrtr_backend(), rules={"tools/call": 30}, allow_tools=["ask"])
    params = {"name": "ask", "arguments": {}}
    retry = {**params, "requestState": "asked", "inputResponses": {}}
    async with httpx2.AsyncClient() as http:
        asked = [await modern_post(http, stack.url, "tools/call", i, params) for i in (1, 2)]
        answered = [await modern_post(http, stack.url, "tools/call", i, retry) for i in (3, 4)]
    assert [r.json()["result"]["resultType"] for r in asked] == ["input_required"] * 2
    assert [r.json()["result"]["content"][0]["text"] for r in answered] == ["answered"] * 2
    assert stack.calls["tools/call"] == 4
    reasons = [d.attributes.get("reason") for d in stack.log.decisions]
    assert reasons == ["input_required", "input_required", "input_responses", "input_responses"]


async def test_initialize_is_never_cached_even_under_a_catch_all_rule(serve: Any) -> None:
    stack = cached_stack(serve, rules={"*": 60})
    async with httpx2.AsyncClient() as http:
        sessions = {await legacy_session(http, stack.url) for _ in range(3)}
    assert len(sessions) == 3 and stack.calls["initialize"] == 3


async def test_upstream_ttl_bounds_the_configured_ttl(serve: Any) -> None:
    stack = cached_stack(serve, build_backend(ttl_ms=800), ttl=60)
    async with connect_as(stack.url, "modern", "alice") as client:
        await client.list_prompts()
        await client.list_prompts()
        assert stack.calls["prompts/list"] == 1
        await anyio.sleep(0.9)
        await client.list_prompts()
    assert stack.calls["prompts/list"] == 2


async def test_upstream_ttl_zero_means_do_not_cache_unless_told_to_ignore_it(serve: Any) -> None:
    honoured, ignored = (
        cached_stack(serve, build_backend(ttl_ms=0)),
        cached_stack(serve, build_backend(ttl_ms=0), honor_ttl_ms=False),
    )
    for stack in (honoured, ignored):
        async with connect_as(stack.url, "modern", "alice") as client:
            await client.list_tools()
            await client.list_tools()
    assert honoured.calls["tools/list"] == 2
    assert ("miss", "ttl_zero") in [(d.outcome, d.attributes.get("reason")) for d in honoured.log.decisions]
    assert ignored.calls["tools/list"] == 1


async def test_configured_ttl_expires(serve: Any) -> None:
    stack = cached_stack(serve, ttl=0.8)
    async with connect_as(stack.url, "legacy", "alice") as client:  # legacy results: only the configured TTL
        await client.list_resources()
        await client.list_resources()
        await anyio.sleep(0.9)
        await client.list_resources()
    assert stack.calls["resources/list"] == 2


async def test_a_rule_of_none_turns_a_method_off(serve: Any) -> None:
    stack = cached_stack(serve, rules={"resources/read": None})
    async with connect_as(stack.url, "modern", "alice") as client:
        for _ in range(2):
            await client.read_resource("demo://counter")
            await client.list_resources()
    assert stack.calls["resources/read"] == 2 and stack.calls["resources/list"] == 1


@pytest.mark.parametrize("era", ERAS)
async def test_every_cursor_page_is_its_own_entry(era: Era, serve: Any) -> None:
    stack = cached_stack(serve, build_paged_backend())
    async with connect_as(stack.url, era, "alice") as client:
        for _ in range(3):
            pages = []
            cursor: str | None = None
            while True:
                page = await client.list_resources(cursor=cursor)
                pages.append([r.name for r in page.resources])
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert pages == [["a"], ["b"], ["c"]]  # the empty-string cursor is a page of its own too
    assert stack.calls["resources/list"] == len(PAGES)


async def test_notifications_and_wrong_accept_are_passed_to_the_backend(serve: Any) -> None:
    """Bad or odd input is the backend's to answer: the cache neither answers nor stores it."""
    stack = cached_stack(serve)
    async with httpx2.AsyncClient() as http:
        session = await legacy_session(http, stack.url)
        await legacy_post(http, stack.url, session, "tools/list", 1)
        refused = await legacy_post(http, stack.url, session, "tools/list", 2, accept="text/html")
        assert refused.status_code == 406  # not a cached 200 (the core answers it: no JSON in Accept)
        assert refused.json()["id"] == 2
        only_sse = await legacy_post(http, stack.url, session, "tools/list", 3, accept="text/event-stream")
        assert only_sse.status_code == 406
        bad_cursor = await legacy_post(http, stack.url, session, "tools/list", 4, params={"cursor": 5})
        assert bad_cursor.headers["x-mcp-cache"] == "miss"  # whatever the backend makes of it, it answers
        note = await http.post(
            stack.url,
            content=b'{"jsonrpc":"2.0","method":"tools/list"}',
            headers={
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "mcp-session-id": session,
                "mcp-protocol-version": "2025-11-25",
            },
        )
        assert note.status_code == 202
    assert stack.calls["tools/list"] == 2  # 1 and the bad cursor reached the backend; 2 and 3 were refused first

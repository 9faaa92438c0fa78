"""Invalidation: a real list_changed from a server that adds a tool, resources/updated, the API, and TTL."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import types

from mcp_middleware.core import Principal
from tests.cache.backends import ISSUER, connect_as
from tests.cache.helpers import cached_stack
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def names(result: types.ListToolsResult) -> list[str]:
    return [tool.name for tool in result.tools]


async def test_modern_list_changed_on_subscriptions_listen_drops_the_cached_list(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:lookup": 60})
    async with connect_as(stack.url, "modern", "alice") as client:
        before = names(await client.list_tools())
        assert names(await client.list_tools()) == before and stack.calls["tools/list"] == 1
        await client.call_tool("lookup", {"key": "k"})
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("add_tool", {"name": "fresh_tool"})
            with anyio.fail_after(5):
                event = await subscription.__anext__()
            assert type(event).__name__ == "ToolsListChanged"
            after = names(await client.list_tools())
        assert after == [*before, "fresh_tool"]
        await client.call_tool("lookup", {"key": "k"})  # tools/call entries went with the list
    assert stack.calls["tools/list"] == 2
    assert stack.calls["tools/call:lookup"] == 2
    assert ("invalidate", "notifications/tools/list_changed") in [
        (d.outcome, d.attributes.get("notification")) for d in stack.log.decisions
    ]


async def test_legacy_list_changed_on_the_get_stream_drops_the_cached_list(serve: Any) -> None:
    stack = cached_stack(serve)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with connect_as(stack.url, "legacy", "alice", message_handler=on_message) as client:
        before = names(await client.list_tools())
        assert names(await client.list_tools()) == before and stack.calls["tools/list"] == 1
        await client.call_tool("add_tool", {"name": "late_tool"})
        with anyio.fail_after(5):
            await changed.wait()
        assert names(await client.list_tools()) == [*before, "late_tool"]
    assert stack.calls["tools/list"] == 2


async def test_resources_updated_drops_that_uri_only(serve: Any) -> None:
    stack = cached_stack(serve)
    async with connect_as(stack.url, "modern", "alice") as client:
        first = await client.read_resource("demo://counter")
        await client.list_resources()
        async with client.listen(resource_subscriptions=["demo://counter"]) as subscription:
            await client.call_tool("touch", {"uri": "demo://counter"})
            with anyio.fail_after(5):
                await subscription.__anext__()
            second = await client.read_resource("demo://counter")
        await client.list_resources()
    assert first != second
    assert stack.calls["resources/read"] == 2
    assert stack.calls["resources/list"] == 1  # the list did not change


async def test_legacy_resources_updated_on_the_get_stream_drops_that_uri(serve: Any) -> None:
    stack = cached_stack(serve)
    updated = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.set()

    async with connect_as(stack.url, "legacy", "alice", message_handler=on_message) as client:
        first = await client.read_resource("demo://counter")
        assert await client.read_resource("demo://counter") == first
        await client.call_tool("touch", {"uri": "demo://counter"})
        with anyio.fail_after(5):
            await updated.wait()
        second = await client.read_resource("demo://counter")
    assert first != second
    assert stack.calls["resources/read"] == 2


async def test_the_api_drops_by_method_mount_and_principal(serve: Any) -> None:
    stack = cached_stack(serve, build_backend_private())
    async with connect_as(stack.url, "modern", "alice") as alice, connect_as(stack.url, "modern", "bob") as bob:
        for client in (alice, bob):
            await client.list_tools()
            await client.list_prompts()
        assert await stack.invalidate(method="prompts/list") == 2  # both partitions
        alice_principal = Principal(subject="alice", issuer=ISSUER, client_id="test-client")
        assert await stack.invalidate(principal=alice_principal) == 2  # her server/discover and tools/list
        for client in (alice, bob):
            await client.list_tools()
            await client.list_prompts()
        assert stack.calls["tools/list"] == 3 and stack.calls["prompts/list"] == 4
        assert await stack.invalidate(mount="/elsewhere") == 0
        assert await stack.invalidate(mount="/mcp") == 5  # Bob's three, Alice's two
        await bob.list_tools()
    assert stack.calls["tools/list"] == 4


def build_backend_private() -> Any:
    from tests.cache.backends import build_backend

    return build_backend(scope="private")


async def test_invalidation_during_a_miss_is_not_undone_by_its_late_store(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:slow_lookup": 60})
    async with connect_as(stack.url, "modern", "alice") as client:
        await client.list_tools()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.call_tool, "slow_lookup", {"key": "k"})
            await until(lambda: stack.calls["tools/call:slow_lookup"] == 1)  # the call is at the backend now
            await stack.invalidate(method="tools/call")
        await client.call_tool("slow_lookup", {"key": "k"})
    assert stack.calls["tools/call:slow_lookup"] == 2
    assert ("miss", "invalidated") in [(d.outcome, d.attributes.get("reason")) for d in stack.log.decisions]

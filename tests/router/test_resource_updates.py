"""`resources/updated` through the aggregate, in both eras, under the public URI.

Modern: a `subscriptions/listen` filter naming a public URI is watched at the backend that owns it
(one backend stream per watched URI, shared) and the backend's update arrives on the client's listen
stream. Legacy: `resources/subscribe` goes to the client's own session at the backend, and the update
arrives on the client's standalone stream. Another URI's update reaches nobody who did not ask.
"""

from __future__ import annotations

import warnings
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated

from mcp_middleware.router import McpRouter
from tests.conftest import connect

pytestmark = pytest.mark.anyio


def notes_server() -> MCPServer:
    server = MCPServer("notes")

    @server.resource("notes://today")
    def today() -> str:
        return "buy milk"

    @server.resource("notes://other")
    def other() -> str:
        return "elsewhere"

    @server.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Announce that a note changed: to listen streams (2026-07-28) and to the caller's session (2025-11-25)."""
        await ctx.notify_resource_updated(uri)
        if ctx.session.protocol_version == "2025-11-25":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await ctx.session.send_resource_updated(uri)
        return f"touched {uri}"

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        return types.EmptyResult()  # a 2025-11-25 backend that accepts subscriptions (MCPServer has no handler)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    return server


async def test_a_modern_listen_filter_is_watched_at_the_owning_backend(serve: Any) -> None:
    router = McpRouter()
    router.mount("notes", notes_server().streamable_http_app())
    served = serve(router)
    async with connect(served.mcp_url, "modern") as client:
        names = {r.uri for r in (await client.list_resources()).resources}
        assert "notes+notes://today" in names
        async with client.listen(resource_subscriptions=["notes+notes://today"]) as subscription:
            await anyio.sleep(0.3)  # the aggregate's watch at the backend is open by now
            await client.call_tool("notes__touch", {"uri": "notes://other"})  # not watched: nothing comes
            await client.call_tool("notes__touch", {"uri": "notes://today"})
            with anyio.fail_after(5):
                event = await subscription.__anext__()
    assert event == ResourceUpdated(uri="notes+notes://today")
    for _ in range(100):  # the last listener left: the backend stream is closed (within 5 s)
        if not router.aggregate.watches._watches:
            break
        await anyio.sleep(0.05)
    assert router.aggregate.watches._watches == {}


async def test_a_legacy_subscription_reaches_the_standalone_stream(serve: Any) -> None:
    router = McpRouter()
    router.mount("notes", notes_server().streamable_http_app())
    served = serve(router)
    updates: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            arrived.set()

    async with connect(served.mcp_url, "legacy", message_handler=on_message) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.subscribe_resource("notes+notes://today")
        await anyio.sleep(0.3)
        await client.call_tool("notes__touch", {"uri": "notes://today"})
        with anyio.fail_after(5):
            await arrived.wait()
    assert updates == ["notes+notes://today"]


async def test_sessions_past_the_bound_are_ended_at_the_backends_too(serve: Any) -> None:
    backend = notes_server()
    router = McpRouter()
    router.mount("notes", backend.streamable_http_app())
    router.aggregate.relay.sessions.max_sessions = 1  # type: ignore[union-attr]
    served = serve(router)
    open_at_backend = backend.session_manager._server_instances  # the SDK's own table (read-only here)
    async with connect(served.mcp_url, "legacy") as first:
        await first.call_tool("notes__touch", {"uri": "notes://x"})
        assert len(open_at_backend) == 1
        async with connect(served.mcp_url, "legacy") as second:
            await second.call_tool("notes__touch", {"uri": "notes://y"})
            for _ in range(100):  # the first client's backend session is ended (DELETE through its stack)
                if len(open_at_backend) == 1:
                    break
                await anyio.sleep(0.05)
            assert len(open_at_backend) == 1
        result = await first.call_tool("notes__touch", {"uri": "notes://z"})  # still served (the bridge)
    assert result.content[0].text == "touched notes://z"  # type: ignore[union-attr]

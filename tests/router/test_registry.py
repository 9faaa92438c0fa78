"""`McpRouter.apply`: servers mounted, unmounted and replaced while the router serves real clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import mcp_types as types
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.subscriptions import ToolsListChanged
from starlette.applications import Starlette

from mcp_middleware.router import Applied, InProcessBackend, McpRouter, MountChanges, MountSpec
from tests.conftest import Served, connect
from tests.servers import ToolLog, build_server

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

EVERY_FAMILY = frozenset({"tools", "prompts", "resources"})


async def apply(served: Served, router: McpRouter, changes: MountChanges, **options: Any) -> Applied:
    """Run `router.apply` in the server's event loop (uvicorn runs it in a thread of its own)."""
    assert served.loop is not None
    future = asyncio.run_coroutine_threadsafe(router.apply(changes, **options), served.loop)
    return await asyncio.wrap_future(future)


def in_process(server: MCPServer) -> InProcessBackend:
    return InProcessBackend(server.streamable_http_app())


def only_tools() -> MCPServer:
    server = MCPServer("only-tools")

    @server.tool()
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    return server


async def status_at(served: Served, path: str) -> int:
    async with httpx2.AsyncClient(base_url=served.base, timeout=30) as http:
        response = await http.post(path, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    return response.status_code


async def test_a_server_added_and_one_removed_reach_both_eras_at_once(serve: Any) -> None:
    router = McpRouter(debounce=0.1)
    router.mount("a", build_server().streamable_http_app())
    served = serve(router)
    legacy_heard = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            legacy_heard.set()

    async with (
        connect(served.mcp_url, "legacy", message_handler=on_message) as legacy,
        connect(served.mcp_url, "modern") as modern,
    ):
        assert "a__echo" in {tool.name for tool in (await legacy.list_tools()).tools}
        async with modern.listen(tools_list_changed=True) as subscription:
            changes = MountChanges(mount=[MountSpec("b", in_process(only_tools()))], unmount=["a"])
            applied = await apply(served, router, changes)
            with anyio.fail_after(10):
                event = await subscription.__anext__()
                await legacy_heard.wait()
        assert isinstance(event, ToolsListChanged)
        # "a" offered tools, prompts and resources: each family is announced; "b" adds tools.
        assert applied == Applied(added=("b",), removed=("a",), replaced=(), notified=EVERY_FAMILY)
        for client in (legacy, modern):
            assert {tool.name for tool in (await client.list_tools()).tools} == {"b__shout"}
            assert (await client.call_tool("b__shout", {"text": "hi"})).content[0].text == "HI"  # type: ignore[union-attr]
    assert await status_at(served, "/mcp/a") == 404
    assert await status_at(served, "/mcp/b") != 404
    assert sorted(router.mounts) == ["b"]


async def test_only_the_families_a_new_server_offers_are_announced(serve: Any) -> None:
    router = McpRouter(debounce=0.1)
    router.mount("a", build_server().streamable_http_app())
    served = serve(router)
    applied = await apply(served, router, MountChanges(mount=[MountSpec("b", in_process(only_tools()))]))
    assert applied.notified == frozenset({"tools"})
    async with connect(served.mcp_url, "modern") as client:
        assert "b__shout" in {tool.name for tool in (await client.list_tools()).tools}
        assert "a__echo" in {tool.name for tool in (await client.list_tools()).tools}


async def test_a_backend_that_cannot_start_changes_nothing(serve: Any) -> None:
    @contextlib.asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    router = McpRouter()
    router.mount("a", build_server().streamable_http_app())
    served = serve(router)
    changes = MountChanges(
        mount=[
            MountSpec("good", in_process(only_tools())),
            MountSpec("bad", InProcessBackend(Starlette(lifespan=broken))),
        ],
        unmount=["a"],
    )
    with pytest.raises(RuntimeError, match="startup failed"):
        await apply(served, router, changes)
    assert sorted(router.mounts) == ["a"]
    async with connect(served.mcp_url, "modern") as client:
        assert "a__echo" in {tool.name for tool in (await client.list_tools()).tools}
    assert await status_at(served, "/mcp/good") == 404
    with pytest.raises(ValueError, match="not mounted: nowhere"):
        await apply(served, router, MountChanges(unmount=["nowhere"]))
    with pytest.raises(ValueError, match="named once"):
        await apply(served, router, MountChanges(mount=[MountSpec("a", in_process(only_tools()))], unmount=["a"]))


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_replaced_server_finishes_its_calls_then_closes(era: Any, serve: Any) -> None:
    log = ToolLog()
    router = McpRouter()
    router.mount("a", build_server(log).streamable_http_app())
    served = serve(router)
    old = router.mounts["a"].backend
    async with connect(f"{served.base}/mcp/a", era) as client:
        await client.list_tools()
        async with anyio.create_task_group() as group:
            results: list[str] = []

            async def call() -> None:
                results.append((await client.call_tool("slow", {"steps": 4})).content[0].text)  # type: ignore[union-attr]

            group.start_soon(call)
            with anyio.fail_after(10):
                while True:
                    if log.events:
                        break
                    await anyio.sleep(0.02)
            applied = await apply(served, router, MountChanges(mount=[MountSpec("a", in_process(only_tools()))]))
            assert applied.replaced == ("a",)
            assert router.mounts["a"].backend is not old
            assert old in router._held  # type: ignore[operator]  # still open: a call runs on it
    assert results == ["done after 4 steps"]
    assert log.events == ["started", "finished"]
    with anyio.fail_after(10):
        while True:  # closed once its call ended
            if old not in router._held:  # type: ignore[operator]
                break
            await anyio.sleep(0.05)
    async with connect(f"{served.base}/mcp/a", "modern") as fresh:
        assert [tool.name for tool in (await fresh.list_tools()).tools] == ["shout"]


async def test_the_drain_is_bounded(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    log = ToolLog()
    router = McpRouter()
    router.mount("a", build_server(log).streamable_http_app())
    router.mount("keep", build_server().streamable_http_app())
    served = serve(router)
    caplog.set_level(logging.WARNING, "mcp_middleware.router")
    old = router.mounts["a"].backend
    async with connect(f"{served.base}/mcp/a", "modern") as client:
        await client.list_tools()
        async with anyio.create_task_group() as group:

            async def endless() -> None:
                with contextlib.suppress(Exception):  # cut when the drain ends
                    await client.call_tool("slow", {"steps": 100})

            group.start_soon(endless)
            with anyio.fail_after(10):
                while True:
                    if log.events:
                        break
                    await anyio.sleep(0.02)
            await apply(served, router, MountChanges(unmount=["a"]), drain_timeout=0.5)
            with anyio.fail_after(20):
                while True:  # closed with the call still running (an in-process call may run on to its end)
                    if "still in flight" in caplog.text:
                        break
                    await anyio.sleep(0.05)
            group.cancel_scope.cancel()
    assert "server 'a' removed: 1 request still in flight after 0.5 s, closed" in caplog.text
    with anyio.fail_after(10):
        while True:  # its lifespan is left (an in-process app's lifespan ends its sessions)
            if old not in router._held:  # type: ignore[operator]
                break
            await anyio.sleep(0.05)
    assert router.mounts["keep"].backend in router._held  # type: ignore[operator]
    assert not any(mount.backend not in router._held for mount in router.mounts.values())  # type: ignore[operator]
    async with connect(served.mcp_url, "modern") as other:  # the others serve on
        assert (await other.call_tool("keep__echo", {"text": "still"})).content[0].text == "still"  # type: ignore[union-attr]


async def test_changes_applied_at_once_are_applied_one_after_the_other(serve: Any) -> None:
    router = McpRouter()
    router.mount("a", build_server().streamable_http_app())
    served = serve(router)
    add_b = MountChanges(mount=[MountSpec("b", in_process(only_tools()))])
    swap_a = MountChanges(mount=[MountSpec("c", in_process(only_tools()))], unmount=["a"])
    replace_b = MountChanges(mount=[MountSpec("b", in_process(build_server()))])
    outcomes: list[Applied] = []

    async def run(changes: MountChanges) -> None:
        outcomes.append(await apply(served, router, changes))

    async with anyio.create_task_group() as group:
        for changes in (add_b, swap_a, replace_b):
            group.start_soon(run, changes)
            await anyio.lowlevel.checkpoint()  # in this order
    assert sorted(router.mounts) == ["b", "c"]
    assert [(o.added, o.removed, o.replaced) for o in outcomes] == [
        (("b",), (), ()),
        (("c",), ("a",), ()),
        ((), (), ("b",)),
    ]
    async with connect(served.mcp_url, "modern") as client:
        assert {"b__echo", "c__shout"} <= {tool.name for tool in (await client.list_tools()).tools}

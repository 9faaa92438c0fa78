"""`McpRouter.mcp_direct` remembers the mount a path resolved to and goes straight in next time: twin routers, one that
remembers and one that forgets every path (the general route each time), get the same traffic (both eras' shapes, a
mount with middleware and one without, trailing slashes, unknown and hostile paths, a `root_path`, mounts replaced
and removed while serving) and must answer it the same, byte for byte but for the ids a server mints."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, read_request
from mcp_middleware.core.kernel import EVERY_PATH
from mcp_middleware.core.request import REQUEST_SCOPE_KEY
from mcp_middleware.router import InProcessBackend, McpRouter, MountChanges, MountSpec
from tests.conftest import Served, serve_app
from tests.servers import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]


class _Forgetful(dict[str, Any]):
    """A table that keeps nothing: its router takes the general route for every request."""

    def __setitem__(self, key: str, value: Any) -> None:
        pass


class _Marking:
    """A mount's middleware: says in a header that the request passed it, and whether it had been read before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read = b"read" if REQUEST_SCOPE_KEY in scope else b"unread"

        async def marked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-marked", read)]}
            await send(message)

        await self.app(scope, receive, marked)


class _ReadFirst:
    """An outer layer that reads the request first (as the gateway's tracing does), then calls `route`."""

    def __init__(self, router: McpRouter) -> None:
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/mcp/"):
            _, receive = await read_request(scope, receive, send, EVERY_PATH)
            if receive is ANSWERED:
                return
        await self.router.mcp_direct(scope, receive, send)


def _shouting() -> MCPServer:
    server = MCPServer("shouting")

    @server.tool()
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    return server


def _router(remembers: bool) -> McpRouter:
    router = McpRouter(debounce=0.1)
    router.mount("plain", build_server().streamable_http_app())
    router.mount("marked", build_server().streamable_http_app(), middleware=[_Marking])
    if not remembers:
        router._mounted = _Forgetful()
    return router


@pytest.fixture
def twins() -> Iterator[list[tuple[McpRouter, Served, Served, Served]]]:
    """(a router served behind a reading layer, it, one served alone, one alone at root path `/gw`) for a router
    that remembers and one that forgets."""
    with (
        serve_app(_ReadFirst(remembering := _router(True))) as a,
        serve_app(_ReadFirst(forgetting := _router(False))) as b,
        serve_app(_router(True)) as alone_a,
        serve_app(_router(False)) as alone_b,
        serve_app(_router(True), root_path="/gw") as rooted_a,
        serve_app(_router(False), root_path="/gw") as rooted_b,
    ):
        yield [(remembering, a, alone_a, rooted_a), (forgetting, b, alone_b, rooted_b)]


_MODERN = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/list",
}
_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


async def _answers(base: str, paths: list[str]) -> list[tuple[int, str | None, Any]]:
    answers = []
    body = orjson.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": _META}})
    async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
        for path in paths:
            for method in ("POST", "GET"):
                response = await http.request(method, path, content=body if method == "POST" else None, headers=_MODERN)
                try:
                    content: Any = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    content = response.content
                answers.append((response.status_code, response.headers.get("x-marked"), content))
    return answers


_PATHS = [
    "/mcp/plain",
    "/mcp/plain/",
    "/mcp/marked",
    "/mcp/marked/",
    "/mcp/plain//",
    "/mcp/nothing",
    "/mcp",
    "/mcp/" + "x" * 3000,
    "/mcp/plain/../marked",
    "/elsewhere",
]


async def _apply(served: Served, router: McpRouter, changes: MountChanges) -> None:
    assert served.loop is not None
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(router.apply(changes, drain_timeout=5), served.loop))


async def test_a_remembered_path_is_answered_as_the_general_route_answers_it(
    twins: list[tuple[McpRouter, Served, Served, Served]],
) -> None:
    (remembering, a, alone_a, rooted_a), (_, b, alone_b, rooted_b) = twins
    rooted = [f"/gw{path}" for path in _PATHS]
    for _ in range(2):  # the second round meets the remembered paths
        assert await _answers(a.base, _PATHS) == await _answers(b.base, _PATHS)
        assert await _answers(alone_a.base, _PATHS) == await _answers(alone_b.base, _PATHS)
        assert await _answers(rooted_a.base, rooted) == await _answers(rooted_b.base, rooted)
    assert set(remembering._mounted) == {"/mcp/plain", "/mcp/plain/", "/mcp/marked", "/mcp/marked/"}
    assert (await _answers(a.base, ["/mcp/marked"]))[0][:2] == (200, "read")  # read by the layer in front
    assert (await _answers(alone_a.base, ["/mcp/marked"]))[0][:2] == (200, "read")  # read by the router first

    # Replaced and removed while serving: a remembered mount that is no longer the one mounted is not used.
    for router, served, _, _ in twins:
        changes = MountChanges(mount=[MountSpec("plain", InProcessBackend(_shouting().streamable_http_app()))])
        await _apply(served, router, MountChanges(unmount=["plain"]))
        assert (await _answers(served.base, ["/mcp/plain"]))[0][0] == 404
        await _apply(served, router, changes)
        await _apply(served, router, MountChanges(unmount=["marked"]))
    after_a, after_b = await _answers(a.base, _PATHS), await _answers(b.base, _PATHS)
    assert after_a == after_b
    names = [tool["name"] for tool in after_a[0][2]["result"]["tools"]]
    assert names == ["shout"]  # the new server behind the old path
    assert after_a[4][0] == 404  # /mcp/marked is gone

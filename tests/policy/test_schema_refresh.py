"""Schemas refresh on list_changed: a backend replaces a tool at run time and says so; the very next call is held
to the new schema, through the path mount (the notification passes through the stack) and through the aggregate
(the router's own session hears it), in both eras."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.session import ServerSession
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcp_middleware.core import Component, CoreConfig
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from mcp_middleware.policy import ArgumentValidationMiddleware
from mcp_middleware.router import InProcessBackend, McpRouter
from tests.conftest import ERAS, Era, connect, free_port, serve_app
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

EVERY_PATH = CoreConfig(paths=("*",))


class ShiftingServer(MCPServer):
    """`level` takes an integer until `reshape` replaces it by one taking a string (or back: `shape="int"`), and
    says so: on the modern `subscriptions/listen` bus and to every legacy session that ever listed its tools (as
    a real server would). Reshaping to the shape it has changes nothing but is announced again.

    Its lists say they stay fresh for `ttl_ms` (ten minutes by default: only a notification makes a change seen
    before the catalog's own 300 s)."""

    def __init__(self, ttl_ms: int = 600_000) -> None:
        super().__init__("shifting", cache_hints={"tools/list": CacheHint(ttl_ms=ttl_ms, scope="public")})
        self.legacy_sessions: list[ServerSession] = []
        self.ran: list[Any] = []
        self.lists = 0

        @self.tool(name="level")
        def level_int(value: int) -> str:
            self.ran.append(value)
            return f"level {value}"

        def level_str(value: str) -> str:
            self.ran.append(value)
            return f"level {value}"

        shapes = {"int": level_int, "str": level_str}

        @self.tool()
        async def reshape(ctx: Context, shape: str = "str", announce: bool = True) -> str:
            """Make `level` take an integer or a string, and announce it (unless told not to)."""
            self.remove_tool("level")
            self.add_tool(shapes[shape], name="level")
            if not announce:
                return "reshaped quietly"
            await ctx.notify_tools_changed()
            sessions = [*self.legacy_sessions]
            if ctx.request_context.protocol_version not in MODERN_PROTOCOL_VERSIONS:
                sessions.append(ctx.request_context.session)
            for session in sessions:
                with contextlib.suppress(Exception), anyio.move_on_after(5):
                    await session.send_tool_list_changed()
            return "reshaped"

    async def _handle_list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self.lists += 1
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS and ctx.session not in self.legacy_sessions:
            self.legacy_sessions.append(ctx.session)
        return await super()._handle_list_tools(ctx, params)


def shifting_app() -> ShiftingServer:
    """`app = "tests.policy.test_schema_refresh:shifting_app"` for the gateway test."""
    return ShiftingServer()


def shifting_router(era: Era, ttl_ms: int = 600_000) -> tuple[McpRouter, ShiftingServer, DecisionRecorder]:
    """The backend behind argument validation; the router's session to it speaks the client's era."""
    server = ShiftingServer(ttl_ms)
    recorder = DecisionRecorder(lambda scope, receive, send: None)  # type: ignore[arg-type, return-value]

    def recorded(app: Any) -> DecisionRecorder:  # the router builds a mount's layers twice (its RFC 9728 path)
        return DecisionRecorder(app, seen=recorder.decisions)

    router = McpRouter(debounce=0.05)
    mode = "legacy" if era == "legacy" else "auto"
    router.mount(
        "shifting",
        InProcessBackend(server.streamable_http_app(), mode=mode),
        middleware=[recorded, lambda app: ArgumentValidationMiddleware(app, config=EVERY_PATH)],
    )
    return router, server, recorder


async def refused(client: Client, name: str, arguments: dict[str, Any]) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await client.call_tool(name, arguments)
    return raised.value


@contextlib.asynccontextmanager
async def told_of_changes(url: str, era: Era) -> AsyncIterator[tuple[Client, Any]]:
    """A client, and `wait()` that returns once it heard tools/list_changed (legacy: its GET stream)."""
    heard = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            heard.set()

    async with connect(url, era, message_handler=on_message) as client:
        if era == "legacy":

            async def wait_legacy(reshape: str, shape: str = "str") -> None:
                await client.call_tool(reshape, {"shape": shape})
                with anyio.fail_after(20):
                    await heard.wait()

            yield client, wait_legacy
        else:

            async def wait_modern(reshape: str, shape: str = "str") -> None:
                async with client.listen(tools_list_changed=True) as subscription:
                    for _ in range(5):  # the router's own listen stream may still be opening: announce again
                        await client.call_tool(reshape, {"shape": shape})
                        with anyio.move_on_after(4):
                            event = await subscription.__anext__()
                            break
                    else:
                        raise AssertionError("no tools/list_changed reached the client")
                assert type(event).__name__ == "ToolsListChanged"

            yield client, wait_modern


@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
@pytest.mark.parametrize("era", ERAS)
async def test_the_call_right_after_list_changed_meets_the_new_schema(era: Era, endpoint: str, serve: Any) -> None:
    router, server, recorder = shifting_router(era)
    served = serve(router)
    url, prefix = (f"{served.base}/mcp/shifting", "") if endpoint == "mount" else (served.mcp_url, "shifting__")
    async with told_of_changes(url, era) as (client, reshape_and_wait):
        await client.list_tools()  # a legacy backend session is known to the server from here on
        old_ok = await client.call_tool(f"{prefix}level", {"value": 3})
        old_refusal = await refused(client, f"{prefix}level", {"value": "high"})
        await reshape_and_wait(f"{prefix}reshape")
        new_ok = await client.call_tool(f"{prefix}level", {"value": "high"})
        new_refusal = await refused(client, f"{prefix}level", {"value": 3})
    assert old_ok.content[0].text == "level 3"  # type: ignore[union-attr]
    assert new_ok.content[0].text == "level high"  # type: ignore[union-attr]
    for refusal, message in ((old_refusal, "'high' is not of type 'integer'"), (new_refusal, "3 is not of type")):
        assert refusal.code == -32602
        assert refusal.data == {"path": "$.value", "message": refusal.data["message"]}  # the gateway's, not the SDK's
        assert message in refusal.data["message"]
    assert server.ran == [3, "high"]  # neither refused call reached the backend
    outcomes = recorder.outcomes(Component.ARGUMENTS)  # the reshape calls (allowed) in the middle
    assert outcomes[:2] == ["allow", "rejected"] and outcomes[-2:] == ["allow", "rejected"]
    assert set(outcomes[2:-2]) == {"allow"}


@pytest.mark.parametrize("era", ERAS)
async def test_the_routers_session_refreshes_schemas_when_no_client_listens(era: Era, serve: Any) -> None:
    """Nobody holds a notification stream: the aggregate's own session to the backend hears the change."""
    router, server, recorder = shifting_router(era)
    served = serve(router)
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        assert (await refused(client, "shifting__level", {"value": "high"})).code == -32602
        await client.call_tool("shifting__reshape", {})
        codes: list[int] = []
        outcome: str | None = None
        with anyio.fail_after(20):  # the change reaches the stack in the background; the catalog would wait 300 s
            while outcome is None:
                try:
                    result = await client.call_tool("shifting__level", {"value": "high"})
                except MCPError as exc:
                    codes.append(exc.code)
                    if len(codes) % 40 == 0:  # the router's listen stream was not open yet: announce again
                        await client.call_tool("shifting__reshape", {})
                    await anyio.sleep(0.05)
                else:
                    outcome = result.content[0].text  # type: ignore[union-attr]
        refusal = await refused(client, "shifting__level", {"value": 3})
    assert outcome == "level high" and set(codes) <= {-32602}
    assert refusal.data["path"] == "$.value" and server.ran == ["high"]
    # The catalog was told, not aged out: one refusal before the change, then the new schema's verdicts.
    outcomes = recorder.outcomes(Component.ARGUMENTS)  # the reshape call is validated too (allowed)
    assert outcomes[:2] == ["rejected", "allow"] and outcomes[-2:] == ["allow", "rejected"]


async def test_a_short_ttl_ms_on_the_list_refreshes_schemas_nobody_announced(serve: Any) -> None:
    """A backend that changes silently but says its list is fresh for 1.5 s is listed again after that, not
    after 300 s. Raw requests: the SDK client lists tools on its own, and a list passing through teaches too."""
    router, server, recorder = shifting_router("modern", ttl_ms=1500)
    served = serve(router)
    url = f"{served.base}/mcp/shifting"

    async def call(http: httpx2.AsyncClient, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        body = modern_body("tools/call", {"name": name, "arguments": arguments})
        response = await http.post(url, content=body, headers=modern_headers("tools/call", name))
        assert response.status_code == 200
        answer: dict[str, Any] = response.json()
        return answer

    async with httpx2.AsyncClient(timeout=30) as http:
        before = await call(http, "level", {"value": "high"})
        quiet = await call(http, "reshape", {"announce": False})
        assert quiet["result"]["content"][0]["text"] == "reshaped quietly"
        still_old = await call(http, "level", {"value": "high"})  # within the ttl: the old schema holds
        await anyio.sleep(2.6)  # past the 1.5 s ttl and the fetcher's 1 s floor
        fresh = await call(http, "level", {"value": "high"})
    assert before["error"]["data"]["path"] == "$.value" and still_old["error"]["data"]["path"] == "$.value"
    assert fresh["result"]["content"][0]["text"] == "level high" and server.ran == ["high"]
    assert recorder.outcomes(Component.ARGUMENTS) == ["rejected", "allow", "rejected", "allow"]


async def test_ttl_ms_zero_is_no_promise_and_lists_nothing_again(serve: Any) -> None:
    """`MCPServer` answers `ttlMs: 0` unless built with cache hints: read as no promise, not as "list again before
    every call" (which would cost a `tools/list` round trip on most calls)."""
    router, server, recorder = shifting_router("modern", ttl_ms=0)
    served = serve(router)
    url = f"{served.base}/mcp/shifting"
    async with httpx2.AsyncClient(timeout=30) as http:
        for _ in range(2):
            body = modern_body("tools/call", {"name": "level", "arguments": {"value": 3}})
            response = await http.post(url, content=body, headers=modern_headers("tools/call", "level"))
            assert response.status_code == 200 and "result" in response.json()
            await anyio.sleep(1.2)  # past the fetcher's one-second floor
    assert server.lists == 1  # the first call's fetch only
    assert recorder.outcomes(Component.ARGUMENTS) == ["allow", "allow"]


GATEWAY = """
[[servers]]
name = "shifting"
app = "tests.policy.test_schema_refresh:shifting_app"

[policy]
validate_arguments = true
"""


@pytest.mark.parametrize("era", ERAS)
async def test_the_gateway_refreshes_schemas_at_both_doors(era: Era, tmp_path: Path) -> None:
    """The gateway's stacks (built from `[policy] validate_arguments`) are told too: the mount's client reshapes
    `level` to take a string, then the aggregate's reshapes it back to an integer."""
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY, encoding="utf-8")
    port = free_port()
    gateway = build_gateway(load_config(config), port=port)
    doors = [("/mcp/shifting", "", 3, "high", "str"), ("/mcp", "shifting__", "high", 3, "int")]
    with serve_app(gateway.app, port=port) as served:
        for path, prefix, old, new, shape in doors:
            async with told_of_changes(f"{served.base}{path}", era) as (client, reshape_and_wait):
                await client.list_tools()
                assert (await client.call_tool(f"{prefix}level", {"value": old})).content[0].text == f"level {old}"  # type: ignore[union-attr]
                before = await refused(client, f"{prefix}level", {"value": new})
                await reshape_and_wait(f"{prefix}reshape", shape)
                after = await client.call_tool(f"{prefix}level", {"value": new})
                now_refused = await refused(client, f"{prefix}level", {"value": old})
            assert before.data["path"] == "$.value" and now_refused.data["path"] == "$.value", path
            assert after.content[0].text == f"level {new}", path  # type: ignore[union-attr]

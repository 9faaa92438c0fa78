"""A 2026-07-28 client at the aggregate, calling a backend the router reaches over 2025-11-25 only, would be
answered by the aggregate's own server through the SDK bridge, which does not pass the backend's stack: every
per-backend layer (policy, argument validation, rate limit, cache, breaker) would be skipped. The relay fails
closed instead: such a call to a backend with a stack of its own is refused (403, -32013, `data.reason =
"era_bridge"`); a 2025-11-25 session reaches it through its stack; a backend with no stack still bridges.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer

from mcp_middleware.core import CoreConfig
from mcp_middleware.policy import CelPolicyEngine, PolicyMiddleware
from mcp_middleware.router import InProcessBackend, McpRouter, StdioBackend
from tests.conftest import connect

pytestmark = pytest.mark.anyio

FORBID_ALL = '[[rules]]\nid = "closed"\neffect = "forbid"\nmatch = "*"\nreason = "closed"'


def closed_router(mode: str) -> McpRouter:
    server = MCPServer("old")

    @server.tool()
    def secret() -> str:
        return "leaked"

    engine = CelPolicyEngine.from_text(FORBID_ALL)
    router = McpRouter()
    router.mount(
        "old",
        InProcessBackend(server.streamable_http_app(), mode=mode),  # type: ignore[arg-type]
        middleware=[lambda app: PolicyMiddleware(app, engine=engine, config=CoreConfig(paths=("*",)))],
    )
    return router


async def test_the_stack_refuses_when_the_router_speaks_the_clients_era(serve: Any) -> None:
    served = serve(closed_router("auto"))
    async with connect(served.mcp_url, "modern") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("old__secret", {})
    assert refused.value.code == -32013


async def test_a_modern_call_to_a_governed_2025_era_backend_fails_closed(serve: Any) -> None:
    served = serve(closed_router("legacy"))
    async with connect(served.mcp_url, "modern") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("old__secret", {})
    assert refused.value.code == -32013
    assert refused.value.data == {"server": "old", "reason": "era_bridge"}


async def test_a_legacy_session_reaches_a_2025_era_backend_through_its_stack(serve: Any) -> None:
    served = serve(closed_router("legacy"))
    async with connect(served.mcp_url, "legacy") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("old__secret", {})
    assert refused.value.code == -32013  # the policy's refusal, not the bridge's
    assert (refused.value.data or {}).get("reason") != "era_bridge"


async def test_a_2025_era_backend_without_a_stack_still_bridges_the_eras(serve: Any) -> None:
    server = MCPServer("old")

    @server.tool()
    def hello() -> str:
        return "hello from 2025"

    router = McpRouter()
    router.mount("old", InProcessBackend(server.streamable_http_app(), mode="legacy"))
    async with connect(serve(router).mcp_url, "modern") as client:
        result = await client.call_tool("old__hello", {})
    assert result.content[0].text == "hello from 2025"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_a_stdio_backend_s_stack_governs_calls_at_the_aggregate(era: str, serve: Any, tmp_path: Any) -> None:
    """A stdio backend speaks 2025-11-25 to its own aggregate, which serves both eras: calls go through its stack."""
    engine = CelPolicyEngine.from_text(FORBID_ALL)
    router = McpRouter()
    router.mount(
        "local",
        StdioBackend(sys.executable, ["-m", "tests.router.stdio_server", str(tmp_path / "generation")], timeout=30),
        middleware=[lambda app: PolicyMiddleware(app, engine=engine, config=CoreConfig(paths=("*",)))],
    )
    async with connect(serve(router).mcp_url, era) as client:  # type: ignore[arg-type]
        with pytest.raises(MCPError) as refused:
            await client.call_tool("local__pid", {})
    assert refused.value.code == -32013
    assert (refused.value.data or {}).get("reason") != "era_bridge"  # the policy's refusal, in the stack

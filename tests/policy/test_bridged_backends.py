"""A known gap, pinned so it cannot be forgotten: a 2026-07-28 client at the aggregate, calling a backend the
router reaches over 2025-11-25 only, is answered by the aggregate's own server through the SDK bridge, which
does not pass the backend's stack. Every per-backend layer (policy, argument validation, rate limit, cache,
breaker) is skipped on that path. Strict xfail: whoever routes the bridge through the stack removes the mark.
"""

from __future__ import annotations

from typing import Any

import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer

from mcp_middleware.core import CoreConfig
from mcp_middleware.policy import CelPolicyEngine, PolicyMiddleware
from mcp_middleware.router import InProcessBackend, McpRouter
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


@pytest.mark.xfail(strict=True, reason="the aggregate's era bridge does not pass the backend's stack (see module)")
async def test_the_stack_refuses_a_modern_call_to_a_2025_era_backend(serve: Any) -> None:
    served = serve(closed_router("legacy"))
    async with connect(served.mcp_url, "modern") as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("old__secret", {})
    assert refused.value.code == -32013

"""The shipped example's policies hold at the aggregate as at the mount (examples/gateway/gateway.toml).

`tools/call:countdown` needs `demo:slow`, and `slow-tools` lets two countdowns through per
user, then 429 — written once, in the demo server's own names, for `/mcp/demo` and `/mcp` alike.
Tokens are minted by the gateway's own embedded authorization server, for each endpoint's audience.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.gateway.test_oauth import EXAMPLE

pytestmark = pytest.mark.anyio


@pytest.fixture
def example() -> Iterator[tuple[Gateway, Served]]:
    port = free_port()
    gateway = build_gateway(load_config(EXAMPLE), port=port)
    with serve_app(gateway.app, port=port) as served:
        yield gateway, served


def token(gateway: Gateway, resource: str, scope: str, subject: str = "alice") -> str:
    issued, _ = gateway.authorization_server.issue_access_token(
        subject=subject, client_id="policy-test", scope=scope, resource=resource
    )
    return str(issued)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["/mcp", "/mcp/demo"])
async def test_countdown_needs_its_scope_at_both_endpoints(
    era: Era, endpoint: str, example: tuple[Gateway, Served]
) -> None:
    gateway, served = example
    url = f"{served.base}{endpoint}"
    tool = "demo__countdown" if endpoint == "/mcp" else "countdown"
    echo = "demo__echo" if endpoint == "/mcp" else "echo"
    async with client(url, era, token(gateway, f"{gateway.base_url}{endpoint}", "mcp")) as session:
        assert (await session.call_tool(echo, {"text": "allowed"})).content[0].text == "allowed"  # type: ignore[union-attr]
        with pytest.raises(Exception) as refused:  # noqa: PT011 - a 403 is the SDK client's own error type
            await session.call_tool(tool, {"steps": 1})
    assert "demo:slow" in str(refused.value)
    allowed = token(gateway, f"{gateway.base_url}{endpoint}", "mcp demo:slow", subject=f"bob-{era}")
    async with client(url, era, allowed) as session:
        first = await session.call_tool(tool, {"steps": 1})
        await session.call_tool(tool, {"steps": 1})
        with pytest.raises(MCPError) as limited:  # slow-tools: capacity 2 per user and server
            await session.call_tool(tool, {"steps": 1})
    assert first.is_error is False
    assert limited.value.code == ErrorCode.RATE_LIMITED
    assert "slow-tools" in limited.value.message


@pytest.mark.parametrize("era", ERAS)
async def test_the_slow_tools_budget_is_one_for_both_endpoints(era: Era, example: tuple[Gateway, Served]) -> None:
    gateway, served = example
    subject = f"carol-{era}"
    mount = token(gateway, f"{gateway.base_url}/mcp/demo", "mcp demo:slow", subject)
    aggregate = token(gateway, f"{gateway.base_url}/mcp", "mcp demo:slow", subject)
    async with client(f"{served.base}/mcp/demo", era, mount) as session:
        await session.call_tool("countdown", {"steps": 1})
    async with client(f"{served.base}/mcp", era, aggregate) as session:
        await session.call_tool("demo__countdown", {"steps": 1})
        with pytest.raises(MCPError) as limited:
            await session.call_tool("demo__countdown", {"steps": 1})
    assert limited.value.code == ErrorCode.RATE_LIMITED

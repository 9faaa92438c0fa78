"""Global sections apply to every backend in its own names; a `[[servers]]` entry overrides them for itself.

Two servers run the same tools. The global `[auth.scopes]` guard `echo`, the global limit allows
many calls; server `strict` keeps the global scope but gets its own tight limit, server `open`
drops the scope. Each decision is the same at the server's path mount and at the aggregate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client

pytestmark = pytest.mark.anyio

CONFIG = """
[[servers]]
name = "strict"
app = "tests.servers:build_server"
[[servers.ratelimit_policies]]
name = "strict-lookup"
selector = "tools/call:lookup"
capacity = 1
rate = 0.001
[servers.breaker_timeouts]
"tools/call:slow" = 5

[[servers]]
name = "open"
app = "tests.servers:build_server"
cache_ttl = 5
[servers.scopes]

[auth]
mode = "dev"
[auth.scopes]
"tools/call:echo" = ["echo:use"]

[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 1000
rate = 1000
"""


@contextlib.contextmanager
def running(tmp_path: Path) -> Iterator[tuple[Gateway, Served]]:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    port = free_port()
    gateway = build_gateway(load_config(path), port=port)
    with serve_app(gateway.app, port=port) as served:
        yield gateway, served


def token(gateway: Gateway, endpoint: str, subject: str) -> str:
    issued, _ = gateway.authorization_server.issue_access_token(
        subject=subject, client_id="overrides", scope="", resource=f"{gateway.base_url}{endpoint}"
    )
    return str(issued)


def test_overrides_are_read_per_server(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    strict, open_ = load_config(path).servers
    assert strict.scopes is None and strict.breaker_timeouts == {"tools/call:slow": 5}
    assert strict.ratelimit_policies is not None and strict.ratelimit_policies[0].name == "strict-lookup"
    assert open_.scopes == {} and open_.ratelimit_policies is None and open_.cache_ttl == 5


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["/mcp", "mount"])
async def test_each_server_decides_by_its_own_policy_at_both_endpoints(era: Era, endpoint: str, tmp_path: Path) -> None:
    with running(tmp_path) as (gateway, served):
        for server in ("strict", "open"):
            path = "/mcp" if endpoint == "/mcp" else f"/mcp/{server}"
            name = (lambda tool, server=server: f"{server}__{tool}") if endpoint == "/mcp" else (lambda tool: tool)
            async with client(f"{served.base}{path}", era, token(gateway, path, f"user-{era}-{endpoint}")) as session:
                if server == "strict":
                    with pytest.raises(Exception, match="echo:use"):  # the global scope holds here
                        await session.call_tool(name("echo"), {"text": "x"})
                    await session.call_tool(name("lookup"), {"key": "a"})
                    with pytest.raises(MCPError) as limited:  # and its own limit
                        await session.call_tool(name("lookup"), {"key": "b"})
                    assert limited.value.code == ErrorCode.RATE_LIMITED
                    assert "strict-lookup" in limited.value.message
                else:
                    echoed = await session.call_tool(name("echo"), {"text": "no scope needed"})
                    assert echoed.content[0].text == "no scope needed"  # type: ignore[union-attr]
                    for key in ("a", "b", "c"):  # the global per-user limit, not strict's
                        await session.call_tool(name("lookup"), {"key": key})

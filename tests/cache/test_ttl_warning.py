"""A cache that honours `ttlMs: 0` caches nothing: it says so once per backend, naming the setting to change."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer

from mcp_middleware.core import get_principal
from tests.cache.backends import build_backend, connect_as
from tests.cache.helpers import cached_stack
from tests.conftest import ERAS, Era

pytestmark = pytest.mark.anyio


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mcp_middleware.cache" and r.levelno == logging.WARNING]


def sdk_default_server() -> MCPServer:
    """An `MCPServer` as the SDK builds it: no cache hints, so every cacheable result says `ttlMs: 0`."""
    server = MCPServer("plain")

    @server.tool()
    def echo(text: str) -> str:
        return text

    return server


async def test_ttl_zero_from_the_sdk_default_is_warned_about_once(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_middleware.cache")
    stack = cached_stack(serve, sdk_default_server())
    async with connect_as(stack.url, "modern", "alice") as client:
        for _ in range(3):
            await client.list_tools()
            await client.list_prompts()
    assert stack.calls["tools/list"] >= 3  # nothing was cached: that is what the warning is about
    (warning,) = cache_warnings(caplog)
    assert "ttlMs: 0" in warning and "honor_ttl_ms=False" in warning and "honor_ttl_ms = false" in warning
    assert "backend '/mcp'" in warning  # the mount: the request path unless `mount=` names it


@pytest.mark.parametrize("era", ERAS)
async def test_each_mount_is_named_in_its_own_warning(era: Era, serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_middleware.cache")

    def mount_of(scope: Any) -> str:  # two backends behind one middleware, told apart by the test user
        return "github" if get_principal(scope).subject == "alice" else "jira"

    stack = cached_stack(serve, build_backend(ttl_ms=0), mount=mount_of)
    for user in ("alice", "bob"):
        async with connect_as(stack.url, era, user) as client:
            await client.list_tools()
            await client.list_tools()
    warnings = cache_warnings(caplog)
    if era == "legacy":
        assert warnings == []  # legacy results carry no ttlMs: the configured ttl applies, and caches
        assert stack.calls["tools/list"] == 2  # one per mount (and user)
    else:
        assert len(warnings) == 2
        assert "'github'" in warnings[0] and "'jira'" in warnings[1]


async def test_no_warning_when_ttl_hints_are_ignored_or_positive(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_middleware.cache")
    ignored = cached_stack(serve, sdk_default_server(), honor_ttl_ms=False)
    hinted = cached_stack(serve, build_backend(ttl_ms=60_000))
    for stack in (ignored, hinted):
        async with connect_as(stack.url, "modern", "alice") as client:
            await client.list_tools()
            await client.list_tools()
        assert stack.calls["tools/list"] == 1
    assert cache_warnings(caplog) == []

"""The aggregate's kept list answers: framed as the server framed them, and never one caller's for another.

A backend whose stack filters lists (`AuthMiddleware(filter_lists=True)`) shows each caller only
what it may use, at its mount and in the aggregate's merged lists alike; a kept answer is per
principal then, so the order in which callers ask changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.middleware import Middleware

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import CoreConfig
from mcp_middleware.router import McpRouter
from tests.support.requests import legacy_body, legacy_headers, legacy_session
from tests.support.sse import sse_messages

pytestmark = pytest.mark.anyio

TOKENS = {
    "admin-token": {"subject": "alice", "scopes": ["mcp", "admin"]},
    "user-token": {"subject": "bob", "scopes": ["mcp"]},
}


def router() -> McpRouter:
    server = MCPServer("ops")

    @server.tool()
    def status() -> str:
        return "green"

    @server.tool()
    def reset_everything() -> str:
        return "reset"

    verifier = StaticTokenVerifier(TOKENS)
    every = CoreConfig(paths=("*",))
    built = McpRouter(
        aggregate_middleware=[
            Middleware(
                AuthMiddleware, verifier=verifier, resource="http://127.0.0.1/mcp", require_audience=False, config=every
            )
        ]
    )
    built.mount(
        "ops",
        server.streamable_http_app(),
        middleware=[
            Middleware(
                AuthMiddleware,
                verifier=verifier,
                resource="http://127.0.0.1/mcp/ops",
                require_audience=False,
                scopes={"tools/call:reset_*": ["admin"]},
                filter_lists=True,
                config=every,
            )
        ],
    )
    return built


async def legacy_list(http: httpx2.AsyncClient, url: str, token: str) -> tuple[str, list[str]]:
    auth = {"authorization": f"Bearer {token}"}
    session = await legacy_session(http, url, **auth)
    listed = await http.post(url, content=legacy_body("tools/list", None, 2), headers=legacy_headers(session, **auth))
    if listed.headers["content-type"].startswith("text/event-stream"):
        [answer] = [m for m in sse_messages(listed.text) if m.get("id") == 2]
    else:
        answer = listed.json()
    return listed.headers["content-type"], sorted(tool["name"] for tool in answer["result"]["tools"])


@pytest.mark.parametrize("order", [("admin-token", "user-token"), ("user-token", "admin-token")])
async def test_each_caller_sees_its_own_list_whoever_asked_first(order: tuple[str, str], serve: Any) -> None:
    served = serve(router())
    seen: dict[str, list[tuple[str, list[str]]]] = {}
    async with httpx2.AsyncClient(timeout=30) as http:
        for _ in range(2):  # the second round is answered from kept answers
            for token in order:
                seen.setdefault(token, []).append(await legacy_list(http, served.mcp_url, token))
        mount = {token: await legacy_list(http, f"{served.mcp_url}/ops", token) for token in order}
    assert all(names == ["ops__status"] for _, names in seen["user-token"])
    assert all(names == ["ops__reset_everything", "ops__status"] for _, names in seen["admin-token"])
    assert mount["user-token"][1] == ["status"] and mount["admin-token"][1] == ["reset_everything", "status"]
    framings = {content_type for answers in seen.values() for content_type, _ in answers}
    assert len(framings) == 1  # a kept answer is framed as the server framed the first one

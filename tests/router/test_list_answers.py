"""The aggregate's kept list answers: framed as the server framed them, and never one caller's for another.

A backend whose stack filters lists (`AuthMiddleware(filter_lists=True)`) shows each caller only
what it may use, at its mount and in the aggregate's merged lists alike; a kept answer is per
principal then, so the order in which callers ask changes nothing.
"""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.middleware import Middleware

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import CoreConfig
from mcp_middleware.router import McpRouter

pytestmark = pytest.mark.anyio

TOKENS = {
    "admin-token": {"subject": "alice", "scopes": ["mcp", "admin"]},
    "user-token": {"subject": "bob", "scopes": ["mcp"]},
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


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
    auth = {**HEADERS, "authorization": f"Bearer {token}"}
    opened = await http.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers=auth,
    )
    session = {**auth, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    listed = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session)
    text = listed.text
    if listed.headers["content-type"].startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and '"id":2' in line)
    return listed.headers["content-type"], sorted(tool["name"] for tool in orjson.loads(text)["result"]["tools"])


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

"""Only MCP traffic is touched: REST routes, websockets and lifespan pass through every middleware unread."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse
from starlette.applications import Starlette
from starlette.routing import Mount
from websockets.asyncio.client import connect as ws_connect

from mcp_middleware import CoreConfig, McpCoreMiddleware, get_mcp_request
from mcp_middleware.core.request import REQUEST_SCOPE_KEY
from tests.conftest import ERAS, Era, connect
from tests.servers import build_server

pytestmark = pytest.mark.anyio


def fastapi_app(limit: int = 1024) -> tuple[FastAPI, dict[str, Any]]:
    """A FastAPI app with REST routes, a websocket and an MCPServer, the core added as middleware."""
    state: dict[str, Any] = {"lifespan": [], "seen": []}
    server = build_server()
    mcp_app = server.streamable_http_app()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["lifespan"].append("startup")
        async with server.session_manager.run():
            yield
        state["lifespan"].append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/items")
    async def items(request: Request) -> PlainTextResponse:
        state["seen"].append((request.scope.get(REQUEST_SCOPE_KEY, "absent"), get_mcp_request(request)))
        return PlainTextResponse(b"got " + await request.body())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("echo:" + await socket.receive_text())
        await socket.close()

    app.mount("/", mcp_app)
    app.add_middleware(McpCoreMiddleware, config=CoreConfig(max_body_size=limit))
    return app, state


async def test_rest_routes_pass_through_unread(serve: Any) -> None:
    app, state = fastapi_app(limit=1024)
    served = serve(app)
    assert state["lifespan"] == ["startup"]  # the lifespan scope went through the middleware
    async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
        # Not JSON, not application/json, larger than the MCP body bound: none of it concerns the core.
        big = b"x" * 5000
        response = await http.post("/items", content=big, headers={"content-type": "text/plain"})
        assert response.status_code == 200
        assert response.content == b"got " + big
        assert (await http.get("/health")).json() == {"status": "ok"}
    assert state["seen"] == [(None, None)]  # decided "not MCP" once, body never read


@pytest.mark.parametrize("era", ERAS)
async def test_mcp_inside_fastapi(era: Era, serve: Any) -> None:
    app, _ = fastapi_app()
    served = serve(app)
    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool("echo", {"text": "through FastAPI"})
    assert result.content[0].text == "through FastAPI"  # type: ignore[union-attr]
    async with httpx2.AsyncClient(timeout=10) as http:
        refused = await http.post(served.mcp_url, content=b"x" * 2048, headers={"content-type": "application/json"})
    assert refused.status_code == 413  # the MCP path does get the bound


async def test_websockets_pass_through(serve: Any) -> None:
    app, _ = fastapi_app()
    served = serve(app)
    async with ws_connect(served.base.replace("http", "ws") + "/ws") as socket:
        await socket.send("ping")
        assert await socket.recv() == "echo:ping"


async def test_paths_are_relative_to_a_mount(serve: Any) -> None:
    """Inside `Mount("/api", …)` the middleware sees `/mcp`, as Starlette routes do."""
    server = build_server()
    inner = McpCoreMiddleware(server.streamable_http_app())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    served = serve(Starlette(routes=[Mount("/api", app=inner)], lifespan=lifespan))
    async with connect(served.base + "/api/mcp", "modern") as client:
        assert (await client.call_tool("echo", {"text": "mounted"})).content[0].text == "mounted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("paths", "path", "root", "expected"),
    [
        (("/mcp",), "/mcp", "", True),
        (("/mcp",), "/mcp/", "", True),
        (("/mcp",), "/mcpx", "", False),
        (("/mcp",), "/api/mcp", "/api", True),
        (("/mcp",), "/api/mcp", "", False),
        (("/servers/*",), "/servers/github/mcp", "", True),
        (("/servers/*",), "/servers", "", False),
        (("*",), "/anything", "", True),
        (("/",), "/api", "/api", True),
    ],
)
def test_path_matching(paths: tuple[str, ...], path: str, root: str, expected: bool) -> None:
    assert CoreConfig(paths=paths).is_mcp({"type": "http", "path": path, "root_path": root}) is expected


@pytest.mark.parametrize("bad", [{"paths": ()}, {"paths": ("mcp",)}, {"max_body_size": 0}])
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"path|bound"):
        CoreConfig(**bad)

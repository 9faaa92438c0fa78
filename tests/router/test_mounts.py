"""Path mounts: `/mcp/{name}` reaches one backend, through its own middleware, in both eras."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, CoreConfig, McpRequest, read_request
from mcp_middleware.router import InProcessBackend, McpRouter
from tests.conftest import ERAS, Era, connect, require
from tests.router.servers import numbered_server
from tests.servers import build_server

pytestmark = pytest.mark.anyio

MOUNTS = 120


class Recorder:
    """A per-mount middleware that notes which MCP requests it saw (configured for `/mcp` only, on purpose)."""

    def __init__(self, app: ASGIApp, *, seen: list[McpRequest]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request, receive = await read_request(scope, receive, send, CoreConfig(paths=("/mcp",)))
        if receive is ANSWERED:
            return
        if request is not None and request.method:
            self.seen.append(request)
        await self.app(scope, receive, send)


@pytest.mark.parametrize("era", ERAS)
async def test_a_hundred_and_twenty_mounts_each_reach_their_own_server(era: Era, serve: Any) -> None:
    router = McpRouter(aggregate_path=None)
    for index in range(MOUNTS):
        router.mount(f"s{index}", numbered_server(index).streamable_http_app())
    served = serve(router)  # uvicorn runs the router's lifespan, which runs all 120 backends' lifespans
    for index in (0, 1, 57, MOUNTS - 1):
        async with connect(f"{served.base}/mcp/s{index}", era) as client:
            result = await client.call_tool("whoami", {})
        assert result.content[0].text == f"server-{index}"  # type: ignore[union-attr]


async def test_unknown_mount_is_a_json_rpc_404(serve: Any) -> None:
    router = McpRouter()
    router.mount("known", build_server().streamable_http_app())
    served = serve(router)
    async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
        response = await http.post("/mcp/unknown", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        deeper = await http.post("/mcp/known/deeper", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == -32600
    assert "/mcp/unknown" in response.json()["error"]["message"]
    assert deeper.status_code == 404


def test_mount_names_are_validated() -> None:
    router = McpRouter()
    router.mount("ok-name_1", build_server().streamable_http_app())
    with pytest.raises(ValueError, match="already mounted"):
        router.mount("ok-name_1", build_server().streamable_http_app())
    for bad in ("", "has/slash", "has space", "dots.are.not.allowed", "x" * 49):
        with pytest.raises(ValueError, match="server name"):
            router.mount(bad, build_server().streamable_http_app())


@pytest.mark.parametrize("era", ERAS)
async def test_each_mount_has_its_own_middleware_stack(era: Era, serve: Any) -> None:
    seen_a: list[McpRequest] = []
    seen_b: list[McpRequest] = []
    router = McpRouter()
    router.mount("a", build_server().streamable_http_app(), middleware=[lambda app: Recorder(app, seen=seen_a)])
    router.mount("b", build_server().streamable_http_app(), middleware=[lambda app: Recorder(app, seen=seen_b)])
    router.mount("plain", build_server().streamable_http_app())
    served = serve(router)
    async with connect(f"{served.base}/mcp/a", era) as client:
        await client.call_tool("echo", {"text": "to a"})
    async with connect(f"{served.base}/mcp/plain", era) as client:
        await client.call_tool("echo", {"text": "to plain"})
    # The recorder is configured for "/mcp" but mounted at "/mcp/a": the router parsed the request
    # for it, so it saw the call (an auth middleware configured the same way cannot be bypassed).
    assert [r.name for r in seen_a if r.method == "tools/call"] == ["echo"]
    assert seen_b == []


@pytest.mark.parametrize("era", ERAS)
async def test_router_inside_fastapi_runs_from_the_host_lifespan(era: Era, serve: Any) -> None:
    router = McpRouter()
    router.mount("test", build_server().streamable_http_app())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with router.lifespan():
            yield

    host = FastAPI(lifespan=lifespan)

    @host.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    host.mount("/servers", router)
    served = serve(host)
    async with connect(f"{served.base}/servers/mcp/test", era) as client:
        mounted = await client.call_tool("echo", {"text": "mounted in FastAPI"})
    async with connect(f"{served.base}/servers/mcp", era) as client:
        aggregated = await client.call_tool("test__echo", {"text": "aggregated in FastAPI"})
    async with httpx2.AsyncClient(base_url=served.base) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
    assert mounted.content[0].text == "mounted in FastAPI"  # type: ignore[union-attr]
    assert aggregated.content[0].text == "aggregated in FastAPI"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_fastmcp_app_as_an_in_process_backend(era: Era, serve: Any) -> None:
    fastmcp = require("fastmcp", "the fastmcp extra is tested in CI")
    server = fastmcp.FastMCP("fast")

    @server.tool
    def shout(text: str) -> str:
        return text.upper()

    router = McpRouter()
    router.mount("fast", InProcessBackend(server.http_app()))
    served = serve(router)
    async with connect(f"{served.base}/mcp/fast", era) as client:
        mounted = await client.call_tool("shout", {"text": "path mount"})
    async with connect(f"{served.base}/mcp", era) as client:
        aggregated = await client.call_tool("fast__shout", {"text": "aggregate"})
    assert mounted.content[0].text == "PATH MOUNT"  # type: ignore[union-attr]
    assert aggregated.content[0].text == "AGGREGATE"  # type: ignore[union-attr]


class ProtectedResourceMetadata:
    """Answers RFC 9728 metadata for one resource at its host-root URL, as an auth middleware does."""

    def __init__(self, app: ASGIApp, *, resource_path: str) -> None:
        self.app = app
        self.resource_path = resource_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == f"/.well-known/oauth-protected-resource{self.resource_path}":
            host = dict(scope["headers"])[b"host"].decode()
            body = f'{{"resource":"http://{host}{self.resource_path}"}}'.encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


async def test_protected_mount_metadata_is_served_at_the_host_root(serve: Any) -> None:
    router = McpRouter()
    router.mount(
        "secure",
        build_server().streamable_http_app(),
        middleware=[lambda app: ProtectedResourceMetadata(app, resource_path="/mcp/secure")],
    )
    router.mount("open", build_server().streamable_http_app())
    served = serve(router)
    async with httpx2.AsyncClient(base_url=served.base) as http:
        found = await http.get("/.well-known/oauth-protected-resource/mcp/secure")
        missing = await http.get("/.well-known/oauth-protected-resource/mcp/open")
    assert found.status_code == 200
    assert found.json() == {"resource": f"{served.base}/mcp/secure"}
    assert missing.status_code == 404  # an unprotected mount has no metadata


async def test_bad_input_to_a_mount_with_middleware_is_answered_by_the_core(serve: Any) -> None:
    router = McpRouter()
    router.mount("a", build_server().streamable_http_app(), middleware=[lambda app: Recorder(app, seen=[])])
    served = serve(router)
    async with httpx2.AsyncClient(base_url=served.base) as http:
        response = await http.post(
            "/mcp/a", content=b'{"jsonrpc": "2.0", "id": 7, "method": ', headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32700


@pytest.mark.parametrize("era", ERAS)
async def test_a_mount_protected_by_the_auth_middleware(era: Era, serve: Any) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier

    router = McpRouter()
    router.mount(
        "secure",
        build_server().streamable_http_app(),
        middleware=[
            lambda app: AuthMiddleware(
                app,
                verifier=StaticTokenVerifier({"good-token": ["mcp"]}),
                resource="http://127.0.0.1/mcp/secure",
                authorization_servers=["https://issuer.example"],
                require_audience=False,
            )
        ],
    )
    router.mount("open", build_server().streamable_http_app())
    served = serve(router)
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
    async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
        metadata = await http.get("/.well-known/oauth-protected-resource/mcp/secure")
        refused = await http.post("/mcp/secure", json=body)
        opened = await http.post("/mcp/open", json=body, headers={"accept": "application/json, text/event-stream"})
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == "http://127.0.0.1/mcp/secure"
    assert metadata.json()["authorization_servers"] == ["https://issuer.example"]
    assert refused.status_code == 401
    assert refused.json()["id"] == 9
    assert "/.well-known/oauth-protected-resource/mcp/secure" in refused.headers["www-authenticate"]
    assert opened.status_code != 401  # the other mount has no auth of its own
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer good-token"}, timeout=30) as http:
        transport = streamable_http_client(f"{served.base}/mcp/secure", http_client=http)
        async with Client(transport, mode="legacy" if era == "legacy" else "auto", cache=None) as client:
            result = await client.call_tool("echo", {"text": "with a token"})
    assert result.content[0].text == "with a token"  # type: ignore[union-attr]


async def test_aggregate_only_mount_has_no_path(serve: Any) -> None:
    router = McpRouter()
    router.mount("hidden", build_server().streamable_http_app(), path_mount=False)
    served = serve(router)
    async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
        direct = await http.post("/mcp/hidden", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    async with connect(served.mcp_url, "modern") as client:
        result = await client.call_tool("hidden__echo", {"text": "only through the aggregate"})
    assert direct.status_code == 404
    assert result.content[0].text == "only through the aggregate"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="reachable nowhere"):
        router.mount("nowhere", build_server().streamable_http_app(), path_mount=False, aggregate=False)

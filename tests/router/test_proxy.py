"""A remote backend behind a path mount: a transparent streaming reverse proxy, in both eras."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx2
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.router import HttpBackend, McpRouter
from tests.conftest import ERAS, Era, connect, free_port, serve_app
from tests.servers import PROGRESS_INTERVAL, build_server

pytestmark = pytest.mark.anyio


class HeaderLog:
    """Records the headers of every request the backend receives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


def remote_backend(serve: Any) -> tuple[str, HeaderLog]:
    log = HeaderLog(build_server().streamable_http_app())
    return serve(log).mcp_url, log


@pytest.mark.parametrize("era", ERAS)
async def test_remote_backend_through_a_path_mount(era: Era, serve: Any) -> None:
    url, log = remote_backend(serve)
    router = McpRouter()
    router.mount("remote", HttpBackend(url, headers={"X-Backend-Key": "backend-secret"}))
    served = serve(router)
    token = {"Authorization": "Bearer client-token-must-not-leak"}
    async with httpx2.AsyncClient(headers=token, timeout=30) as http:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        transport = streamable_http_client(f"{served.base}/mcp/remote", http_client=http)
        mode = "legacy" if era == "legacy" else "auto"
        async with Client(transport, mode=mode, cache=None) as client:
            tools = await client.list_tools()
            result = await client.call_tool("echo", {"text": "through the proxy"})
    assert "echo" in [tool.name for tool in tools.tools]
    assert result.content[0].text == "through the proxy"  # type: ignore[union-attr]
    assert log.requests, "the backend saw the requests"
    backend_host = url.split("//", 1)[1].split("/", 1)[0]
    for headers in log.requests:
        assert "authorization" not in headers  # no token passthrough
        assert headers["x-backend-key"] == "backend-secret"  # the backend's own credential
        assert headers["host"] == backend_host  # Host rewritten to the backend's
    if era == "legacy":
        # The session the backend minted is the one the client kept using through the proxy.
        session_ids = {h["mcp-session-id"] for h in log.requests if "mcp-session-id" in h}
        assert len(session_ids) == 1
    else:
        assert {h.get("mcp-method") for h in log.requests} >= {"tools/list", "tools/call"}
        assert any(h.get("mcp-name") == "echo" for h in log.requests)


async def test_configured_authorization_forwarding(serve: Any) -> None:
    url, log = remote_backend(serve)
    router = McpRouter()
    router.mount("fwd", HttpBackend(url, forward_authorization=True))
    router.mount("own", HttpBackend(url, headers={"Authorization": "Bearer backend-own"}))
    served = serve(router)
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": _initialize_params()}
    headers = {"Authorization": "Bearer client", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
        await http.post("/mcp/fwd", json=body, headers=headers)
        await http.post("/mcp/own", json=body, headers=headers)
    assert [h.get("authorization") for h in log.requests] == ["Bearer client", "Bearer backend-own"]


@pytest.mark.parametrize("era", ERAS)
async def test_progress_streams_through_the_proxy_while_the_tool_runs(era: Era, serve: Any) -> None:
    url, _ = remote_backend(serve)
    router = McpRouter()
    router.mount("remote", HttpBackend(url))
    served = serve(router)
    arrivals: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.monotonic())

    async with connect(f"{served.base}/mcp/remote", era) as client:
        started = time.monotonic()
        result = await client.call_tool("slow", {"steps": 4}, progress_callback=on_progress)
        finished = time.monotonic()
    assert result.content[0].text == "done after 4 steps"  # type: ignore[union-attr]
    assert len(arrivals) == 4
    # Not buffered: the first notification arrives long before the result, and they come spaced out.
    assert arrivals[0] - started < finished - started - 2 * PROGRESS_INTERVAL
    assert arrivals[-1] - arrivals[0] > 2 * PROGRESS_INTERVAL


async def test_unreachable_backend_is_a_json_rpc_502_with_the_request_id(serve: Any) -> None:
    router = McpRouter()
    router.mount("gone", HttpBackend(f"http://127.0.0.1:{free_port()}/mcp", connect_timeout=2))
    router.mount("gone-parsed", HttpBackend(f"http://127.0.0.1:{free_port()}/mcp"), middleware=[lambda app: app])
    served = serve(router)
    body = {"jsonrpc": "2.0", "id": 42, "method": "tools/list"}
    async with httpx2.AsyncClient(base_url=served.base, timeout=10) as http:
        plain = await http.post("/mcp/gone", json=body)
        parsed = await http.post("/mcp/gone-parsed", json=body)
    assert plain.status_code == 502
    assert plain.json()["error"]["code"] == -32017
    assert parsed.status_code == 502
    assert parsed.json()["id"] == 42  # the router parsed it for the mount's middleware: the id is known
    assert parsed.json()["error"]["data"]["backend"].endswith("/mcp")


async def test_backend_status_and_headers_pass_unchanged(serve: Any) -> None:
    url, _ = remote_backend(serve)
    router = McpRouter()
    router.mount("remote", HttpBackend(url))
    served = serve(router)
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": _initialize_params()}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        direct = await http.post(url, json=body, headers=accept)
        proxied = await http.post(f"{served.base}/mcp/remote", json=body, headers=accept)
        wrong_type = await http.post(f"{served.base}/mcp/remote", content=b"{}", headers={"content-type": "text/plain"})
        direct_wrong = await http.post(url, content=b"{}", headers={"content-type": "text/plain"})
    assert proxied.status_code == direct.status_code == 200
    assert proxied.headers["content-type"] == direct.headers["content-type"] == "text/event-stream"
    assert "mcp-session-id" in proxied.headers
    assert (wrong_type.status_code, wrong_type.text) == (direct_wrong.status_code, direct_wrong.text)


def _initialize_params() -> dict[str, Any]:
    return {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


async def test_an_outage_is_one_warning_naming_the_server_and_one_when_it_ends(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    router = McpRouter(aggregate_path=None)
    router.mount("search", HttpBackend(f"http://127.0.0.1:{port}/mcp"))
    served = serve(router)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"accept": "application/json, text/event-stream"}
    caplog.set_level(logging.DEBUG, logger="mcp_middleware.router")
    async with httpx2.AsyncClient(timeout=10) as http:
        down = [await http.post(f"{served.base}/mcp/search", json=body, headers=headers) for _ in range(3)]
        with serve_app(build_server().streamable_http_app(), port=port):
            back = await http.post(f"{served.base}/mcp/search", json=body, headers=headers)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "mcp_middleware.router"
    ]
    assert [answer.status_code for answer in down] == [502, 502, 502]
    assert back.status_code != 502
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("backend 'search' unreachable") and warnings[1] == "backend 'search' reachable again"

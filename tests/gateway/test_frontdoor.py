"""The front door: Host and Origin allow-lists, CORS and the body limit, each answered as JSON-RPC."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import pytest
from starlette.types import ASGIApp

from mcp_middleware.core import McpCoreMiddleware
from mcp_middleware.gateway.frontdoor import FrontDoorMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def door(**options: object) -> ASGIApp:
    server = build_server()
    return FrontDoorMiddleware(McpCoreMiddleware(server.streamable_http_app()), **options)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_real_clients_pass_the_default_door(serve: Callable[[ASGIApp], Served], era: Era) -> None:
    served = serve(door())
    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool("echo", {"text": "hi"})
    assert result.content[0].text == "hi"  # type: ignore[union-attr]


def test_a_host_not_allowed_gets_421(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(door())
    response = httpx2.post(served.mcp_url, content=PING, headers={**HEADERS, "host": "attacker.example:80"})
    assert response.status_code == 421
    assert response.json()["error"] == {"code": -32013, "message": "Host not allowed"}


def test_health_checks_skip_the_host_check(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(door())
    response = httpx2.get(f"{served.base}/healthz", headers={"host": "10.1.2.3:8000"})
    assert response.status_code == 404  # reached the app (which has no /healthz), not refused by the door


def test_an_origin_not_allowed_gets_403(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(door())
    response = httpx2.post(served.mcp_url, content=PING, headers={**HEADERS, "origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Origin not allowed"


def test_cors_preflight_and_exposed_headers_for_an_allowed_origin(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(door(allowed_origins=["https://app.example"]))
    preflight = httpx2.options(
        served.mcp_url,
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, mcp-protocol-version",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "Mcp-Session-Id" in preflight.headers["access-control-allow-headers"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    response = httpx2.post(served.mcp_url, content=PING, headers={**HEADERS, "origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "Mcp-Session-Id" in response.headers["access-control-expose-headers"]


def test_a_declared_body_over_the_limit_is_refused_unread(serve: Callable[[ASGIApp], Served]) -> None:
    served = serve(door(max_body_size=1000))
    response = httpx2.post(served.mcp_url, content=b" " * 1001 + PING, headers=HEADERS)
    assert response.status_code == 413
    assert response.json()["error"]["data"] == {"maxBytes": 1000}


def test_a_streamed_body_over_the_limit_is_cut_off(serve: Callable[[ASGIApp], Served]) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def upload(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"size": len(body)})

    served = serve(
        FrontDoorMiddleware(Starlette(routes=[Route("/upload", upload, methods=["POST"])]), max_body_size=1000)
    )

    def chunks():  # no Content-Length: sent chunked
        for _ in range(10):
            yield b"x" * 500

    response = httpx2.post(f"{served.base}/upload", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == -32010
    small = httpx2.post(f"{served.base}/upload", content=iter([b"x" * 400, b"y" * 400]))
    assert small.json() == {"size": 800}


def _upload_app() -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def upload(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    return Starlette(routes=[Route("/upload", upload, methods=["POST"])])


def test_a_body_longer_than_its_declared_length_never_reaches_the_app(serve: Callable[[ASGIApp], Served]) -> None:
    """The door does not count a body framed by Content-Length: the server stops at the declared length."""
    import socket

    served = serve(FrontDoorMiddleware(_upload_app(), max_body_size=1000))
    host, port = served.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST /upload HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: 5\r\n\r\n".encode()
        sock.sendall(head + b"x" * 5000)
        answer = b""
        while b'"size"' not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert b'{"size":5}' in answer  # the 4,995 bytes beyond are not this request's body


@pytest.mark.anyio
@pytest.mark.parametrize("length", ["²", "9" * 5000, "1e3", "-1", ""])
async def test_a_hostile_content_length_is_no_500(length: str) -> None:
    """Not ASCII digits (`"²".isdigit()` is True), or too long for `int()`: refused or passed, never a crash."""
    sent: list[dict[str, object]] = []
    delivered = False

    async def receive() -> dict[str, object]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "root_path": "",
        "query_string": b"",
        "scheme": "http",
        "http_version": "1.1",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", length.encode("latin-1"))],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await FrontDoorMiddleware(_upload_app(), max_body_size=1000)(scope, receive, send)  # type: ignore[arg-type]
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == (413 if length == "9" * 5000 else 200)

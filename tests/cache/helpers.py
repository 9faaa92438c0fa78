"""Building a cached stack for a test, and speaking raw HTTP to it where the SDK client hides the wire."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson

from mcp_middleware.cache import ResponseCacheMiddleware
from tests.cache.backends import CountingApp, PrincipalFromHeader, build_backend
from tests.conftest import Served
from tests.support.decisions import DecisionRecorder
from tests.support.requests import ACCEPT_BOTH, LEGACY, modern_body, modern_headers
from tests.support.sse import sse_messages


@dataclass
class CachedStack:
    """principal (test only) → decision recorder → cache → call counter → SDK server, served by uvicorn."""

    served: Served
    cache: ResponseCacheMiddleware
    counter: CountingApp
    log: DecisionRecorder
    server: Any

    @property
    def url(self) -> str:
        return self.served.mcp_url

    @property
    def calls(self) -> Any:
        return self.counter.calls

    async def invalidate(self, **selection: Any) -> int:
        """`cache.invalidate(...)` run on the server's event loop (the cache is not shared across threads)."""
        assert self.served.loop is not None, "call after the first request"
        future = asyncio.run_coroutine_threadsafe(self.cache.invalidate(**selection), self.served.loop)
        return await asyncio.wrap_future(future)


def cached_stack(
    serve: Any,
    server: Any = None,
    *,
    json_response: bool = False,
    inner: Any = None,
    **options: Any,
) -> CachedStack:
    """Serve `server` (default: :func:`build_backend`) behind a `ResponseCacheMiddleware(**options)`."""
    server = server if server is not None else build_backend()
    app = server.streamable_http_app(json_response=json_response)
    counter = CountingApp(app)
    cache = ResponseCacheMiddleware(inner(counter) if inner is not None else counter, **options)
    log = DecisionRecorder(cache)
    served = serve(PrincipalFromHeader(log))
    return CachedStack(served, cache, counter, log, server)


async def modern_post(
    http: httpx2.AsyncClient,
    url: str,
    method: str,
    request_id: int | str,
    params: dict[str, Any] | None = None,
    user: str | None = None,
) -> httpx2.Response:
    name = (params or {}).get("name") or (params or {}).get("uri")
    extra = {"x-test-user": user} if user is not None else {}
    return await http.post(
        url, content=modern_body(method, params, request_id), headers=modern_headers(method, name, **extra)
    )


async def legacy_session(http: httpx2.AsyncClient, url: str) -> str:
    """Initialize a legacy session over raw HTTP; returns its `Mcp-Session-Id`."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    headers = {"content-type": "application/json", "accept": ACCEPT_BOTH}
    response = await http.post(url, content=orjson.dumps(init), headers=headers)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    headers = {**headers, "mcp-session-id": session, "mcp-protocol-version": LEGACY}
    done = await http.post(url, content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers=headers)
    assert done.status_code == 202
    return session


async def legacy_post(
    http: httpx2.AsyncClient,
    url: str,
    session: str | None,
    method: str,
    request_id: int,
    params: Any = None,
    **extra: str,
) -> httpx2.Response:
    headers = {"content-type": "application/json", "accept": ACCEPT_BOTH, "mcp-protocol-version": LEGACY, **extra}
    if session is not None:
        headers["mcp-session-id"] = session
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return await http.post(url, content=orjson.dumps(body), headers=headers)


def json_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, JSON or a one-message event stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        messages = [m for m in sse_messages(response.text) if "id" in m and "method" not in m]
        assert len(messages) == 1, response.text
        return messages[0]
    parsed: dict[str, Any] = response.json()
    return parsed

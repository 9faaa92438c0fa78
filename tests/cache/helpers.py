"""Building a cached stack for a test, and posting to it as a given test user (raw requests: tests/support)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx2

from mcp_middleware.cache import ResponseCacheMiddleware
from tests.cache.backends import CountingApp, PrincipalFromHeader, build_backend
from tests.conftest import Served
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers


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

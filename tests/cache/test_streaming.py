"""Streams are never held back, other routes and the lifespan pass through, and the cache fits FastAPI."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from mcp_middleware.cache import ResponseCacheMiddleware
from tests.cache.backends import CountingApp, build_backend, connect_as
from tests.cache.helpers import cached_stack
from tests.conftest import ERAS, Era
from tests.servers import PROGRESS_INTERVAL, build_server

pytestmark = pytest.mark.anyio

STEPS = 2


class ProgressClock:
    """A progress callback that notes when each notification arrived, in seconds since it was made."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.arrivals: list[float] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.arrivals.append(time.monotonic() - self.started)


@pytest.mark.parametrize("era", ERAS)
async def test_progress_arrives_while_the_tool_runs(era: Era, serve: Any) -> None:
    # `slow` is allow-listed, so its first call takes the cache's miss path and its second, which
    # finds the first one's entry expired but within the grace, the stale guard's (which holds a
    # response until its first event: here a progress notification, so it lets go at once).
    stack = cached_stack(serve, build_server(), rules={"tools/call:slow": 0.1}, allow_tools=["slow"], stale_grace=30)
    async with connect_as(stack.url, era, "alice") as client:
        for _ in range(2):
            clock = ProgressClock()
            await client.call_tool("slow", {"steps": STEPS}, progress_callback=clock)
            finished = time.monotonic() - clock.started
            assert len(clock.arrivals) == STEPS
            assert clock.arrivals[0] < finished - (STEPS - 1) * PROGRESS_INTERVAL * 0.8  # long before the end
            await anyio.sleep(0.15)
    assert stack.calls["tools/call:slow"] == 2


async def test_other_paths_and_the_lifespan_pass_through(serve: Any) -> None:
    server = build_server()

    async def health(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[Route("/health", health), Mount("/", server.streamable_http_app())],
        lifespan=lambda app: server.session_manager.run(),
    )
    served = serve(ResponseCacheMiddleware(inner))  # the lifespan must reach the SDK app, or nothing works
    async with httpx2.AsyncClient() as http:
        health_response = await http.get(f"{served.base}/health")
        assert health_response.status_code == 200 and health_response.text == "ok"
        assert "x-mcp-cache" not in health_response.headers
    async with connect_as(served.mcp_url, "modern") as client:
        assert "echo" in [tool.name for tool in (await client.list_tools()).tools]


@pytest.mark.parametrize("era", ERAS)
async def test_fastapi_add_middleware(era: Era, serve: Any) -> None:
    """`app.add_middleware(ResponseCacheMiddleware, ...)` in FastAPI: the cache answers, REST routes are untouched."""
    server = build_backend()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    counter = CountingApp(server.streamable_http_app())
    app.mount("/", counter)
    app.add_middleware(ResponseCacheMiddleware, ttl=30)
    served = serve(app)
    async with connect_as(served.mcp_url, era) as client:
        for _ in range(3):
            await client.list_prompts()
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{served.base}/health")).json() == {"status": "ok"}
    assert counter.calls["prompts/list"] == 1

"""`app.add_middleware(TracingMiddleware, …)` in a FastAPI app: MCP traffic is traced, REST routes are untouched."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI

from mcp_middleware.tracing import TracingMiddleware
from tests.conftest import ERAS, Era, Served, connect
from tests.servers import build_server

from .conftest import Spans

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_added_to_a_fastapi_app_it_traces_mcp_and_leaves_rest_routes_alone(
    serve: Any, spans: Spans, era: Era
) -> None:
    server = build_server()
    mcp_app = server.streamable_http_app()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/", mcp_app)
    app.add_middleware(TracingMiddleware, tracer_provider=spans.provider)
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        await client.call_tool("echo", {"text": "hi"})
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{served.base}/health")).json() == {"status": "ok"}
    assert await spans.named("tools/call echo")
    assert not [s for s in spans.ours() if s.name.startswith("GET /health")]

"""Through auth (list filtering on), responses still stream: progress arrives while a tool runs, in both eras."""

from __future__ import annotations

import time

import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from tests.auth.conftest import Site
from tests.conftest import ERAS, Era, connect
from tests.servers import PROGRESS_INTERVAL

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_progress_arrives_while_the_tool_runs(era: Era, site: Site) -> None:
    url = site.served.mcp_url
    site.slot.app = AuthMiddleware(
        site.mcp_app,
        verifier=StaticTokenVerifier({"t": ["mcp:read"]}, resource=url),
        resource=url,
        authorization_servers=["https://idp.example"],
        required_scopes=["mcp:read"],
        filter_lists=True,
    )
    arrivals: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append(time.monotonic())

    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer t"}, timeout=30) as http,
        connect(streamable_http_client(url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        start = time.monotonic()
        result = await client.call_tool("slow", {"steps": 4}, progress_callback=on_progress)
        end = time.monotonic()
    assert result.content[0].text == "done after 4 steps"  # type: ignore[union-attr]
    assert len(arrivals) == 4
    # Buffered, all four would arrive together at the end; streamed, they are spread out.
    assert arrivals[0] - start < PROGRESS_INTERVAL * 2
    assert end - arrivals[0] > 3 * PROGRESS_INTERVAL * 0.8

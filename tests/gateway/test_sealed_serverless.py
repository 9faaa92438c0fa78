"""The serverless profile with a `session_key`: one legacy session across three execution environments.

Three Lambda handlers built from one config (three execution environments, as Lambda scales out) sit
behind a round-robin transport: every request of the SDK's legacy client goes to the next one, as
API Gateway may send it. With sealed session handles each environment resumes the session the first
one opened (re-opening it from its handle), so every call is answered. Lambda and API Gateway are
the parts that cannot run here (tests/support/api_gateway.py stands for them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import require
from tests.support.api_gateway import HOST, ApiGatewayTransport

require("mangum", "the serverless profile's Lambda adapter (the `lambda` extra)")

from mcp_middleware.gateway.serverless import build_handler  # noqa: E402

CONFIG = f"""
[gateway]
public_url = "https://{HOST}"
gc_freeze = false
session_key = "the serverless test's session key, 32+ characters"

[front_door]
allowed_hosts = ["{HOST}"]
allowed_origins = []

[[servers]]
name = "demo"
app = "examples.gateway.demo:server"

[auth]
mode = "static"
[auth.tokens]
"tok-alice" = {{ subject = "alice", scopes = ["demo:slow"] }}
"""


class RoundRobin(httpx2.AsyncBaseTransport):
    """Each request to the next environment, in turn (no affinity of any kind)."""

    def __init__(self, environments: list[ApiGatewayTransport]) -> None:
        self.environments = environments
        self._next = itertools.cycle(environments)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await next(self._next).handle_async_request(request)


@pytest.fixture
def environments(tmp_path: Path) -> Iterator[list[ApiGatewayTransport]]:
    path = tmp_path / "serverless.toml"
    path.write_text(CONFIG, encoding="utf-8")
    built = [ApiGatewayTransport(lambda: build_handler(path)) for _ in range(3)]
    yield built
    for environment in built:
        environment.close()


@pytest.mark.anyio
async def test_a_legacy_session_is_served_by_every_execution_environment(
    environments: list[ApiGatewayTransport],
) -> None:
    headers = {"authorization": "Bearer tok-alice"}
    async with httpx2.AsyncClient(transport=RoundRobin(environments), headers=headers, timeout=60) as http:
        streams = streamable_http_client(f"https://{HOST}/mcp", http_client=http)
        async with Client(streams, mode="legacy", cache=None) as client:
            assert client.protocol_version == "2025-11-25"
            for a in range(9):
                added = await client.call_tool("demo__add", {"a": a, "b": 1})
                assert added.content[0].text == str(a + 1)  # type: ignore[union-attr]
    for environment in environments:  # every environment answered calls of the one session
        posts = [status for method, status in environment.exchanges if method == "POST"]
        assert posts and all(status < 300 for status in posts), environment.exchanges
    assert all(status < 500 for environment in environments for _, status in environment.exchanges)

"""The SDK's own clients, both eras, through the Lambda handler as API Gateway would call it.

Each HTTP request the client makes becomes one API Gateway event (tests/support/api_gateway.py) handed
to the handler on a thread of its own, as an execution environment would run it; the answer comes back
whole, as Lambda buffers it. Lambda and API Gateway are the parts that cannot run here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ERAS, Era, require
from tests.support.api_gateway import HOST, ApiGatewayTransport, Shape

require("mangum", "the serverless profile's Lambda adapter (the `lambda` extra)")

from mcp_middleware.gateway.serverless import build_handler  # noqa: E402

CONFIG = f"""
[gateway]
public_url = "https://{HOST}"
gc_freeze = false

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


@pytest.fixture(params=["http-api-v2", "rest-v1"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiGatewayTransport]:
    path = tmp_path / "serverless.toml"
    path.write_text(CONFIG, encoding="utf-8")
    shape: Shape = request.param
    built = ApiGatewayTransport(lambda: build_handler(path), shape=shape)
    yield built
    built.close()


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_the_sdk_client_lists_and_calls_through_lambda_events(transport: ApiGatewayTransport, era: Era) -> None:
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    mode = "legacy" if era == "legacy" else "auto"
    headers = {"authorization": "Bearer tok-alice"}
    async with httpx2.AsyncClient(transport=transport, headers=headers, timeout=60) as http:
        streams = streamable_http_client(f"https://{HOST}/mcp", http_client=http)
        async with Client(streams, mode=mode, cache=None) as client:
            assert client.protocol_version == ("2025-11-25" if era == "legacy" else "2026-07-28")
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert {"demo__echo", "demo__add", "demo__countdown"} <= tools
            added = await client.call_tool("demo__add", {"a": 20, "b": 22})
            assert added.content[0].text == "42"  # type: ignore[union-attr]
            counted = await client.call_tool("demo__countdown", {"steps": 2}, progress_callback=on_progress)
            assert counted.content[0].text == "lift-off"  # type: ignore[union-attr]
    assert progress == [0, 1]  # delivered, whole, with the answer
    exchanges = transport.exchanges
    if era == "modern":  # stateless: nothing but POSTs, each answered on its own
        assert {method for method, _ in exchanges} == {"POST"}
        assert {status for _, status in exchanges} == {200}
    else:  # one session across invocations of the one environment; its standing GET stream refused
        assert exchanges[0] == ("POST", 200)
        assert ("POST", 202) in exchanges  # notifications/initialized
        assert {status for method, status in exchanges if method == "GET"} == {405}
        assert ("DELETE", 200) in exchanges  # the client ends its session on the way out
        assert all(status < 500 for _, status in exchanges)

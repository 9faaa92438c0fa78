"""TLS through the server's certificate options: the gateway serves HTTPS with the configured certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from tests.conftest import free_port, self_signed_certificate
from tests.support.serving import serve_in_thread


@pytest.mark.anyio
async def test_the_gateway_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    config = parse_config(
        f"""
[gateway]
port = {port}
tls_certfile = "{cert}"
tls_keyfile = "{key}"
[[servers]]
name = "local"
app = "tests.servers:build_server"
"""
    )
    gateway = build_gateway(config)
    assert gateway.base_url == f"https://127.0.0.1:{port}"
    with serve_in_thread(uvicorn.Server(gateway.uvicorn_config()), name=f"uvicorn-gateway-{port}", patience=15):
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx2.AsyncClient(verify=trusted, timeout=30) as http:
            assert (await http.get(f"{gateway.base_url}/healthz")).status_code == 200
            streams = streamable_http_client(f"{gateway.base_url}/mcp/local", http_client=http)
            async with Client(streams, cache=None) as client:
                result = await client.call_tool("echo", {"text": "over tls"})
        assert result.content[0].text == "over tls"  # type: ignore[union-attr]
        with pytest.raises(httpx2.ConnectError):  # a client that does not trust the certificate refuses
            httpx2.get(f"{gateway.base_url}/healthz")

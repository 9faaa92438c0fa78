"""mTLS to backends: a backend that requires a client certificate from a test CA, reached with and without one.

The CA, the backend's server certificate and the gateway's client certificate are generated here
(`cryptography`); the backend is an SDK `MCPServer` under uvicorn with `ssl_cert_reqs=CERT_REQUIRED`.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx2
import pytest

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from mcp_middleware.gateway.health_check import probe_gateway
from tests.conftest import ERAS, Era, serve_app
from tests.gateway.test_gateway import client
from tests.support.requests import modern_body, modern_headers
from tests.support.tls_serving import Pki, make_pki, mtls_backend

pytestmark = pytest.mark.anyio


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def gateway_config(url: str, pki: Pki) -> str:
    return f"""
[[servers]]
name = "secure"
url = "{url}"
tls = {{ client_cert = "{pki.client_cert}", client_key = "{pki.client_key}", ca_bundle = "{pki.ca}" }}

[[servers]]
name = "nocert"
url = "{url}"
optional = true
tls = {{ ca_bundle = "{pki.ca}" }}
"""


def test_the_backend_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    with mtls_backend(pki) as url, pytest.raises(httpx2.HTTPError):  # the premise: no certificate, no answer
        httpx2.post(url, content=b"{}", verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=10)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_the_gateway_with_the_client_certificate_reaches_the_backend(era: Era, endpoint: str, pki: Pki) -> None:
    with mtls_backend(pki) as url:
        config = parse_config(gateway_config(url, pki).split('[[servers]]\nname = "nocert"')[0])
        gateway = build_gateway(config)
        with serve_app(gateway.app) as served:
            path, tool = ("/mcp/secure", "echo") if endpoint == "mount" else ("/mcp", "secure__echo")
            async with client(f"{served.base}{path}", era, None) as session:
                result = await session.call_tool(tool, {"text": "over mtls"})
            assert result.content[0].text == "over mtls"  # type: ignore[union-attr]


async def test_without_the_certificate_the_call_is_a_json_rpc_502_and_the_health_check_says_why(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_middleware.router"), mtls_backend(pki) as url:
        gateway = build_gateway(parse_config(gateway_config(url, pki)))
        health = {found.name: found for found in await probe_gateway(gateway, patience=15)}
        assert health["secure"].state == "healthy" and "echo" in health["secure"].tools
        assert health["nocert"].state != "healthy"
        # uvicorn closes the connection after the handshake without an alert: the reason says where to look
        assert "tls.client_cert" in health["nocert"].reason, health["nocert"].reason
        with serve_app(gateway.app) as served:
            async with httpx2.AsyncClient(timeout=30) as http:
                response = await http.post(
                    f"{served.base}/mcp/nocert",
                    content=modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, request_id=9),
                    headers=modern_headers("tools/call", "echo"),
                )
                async with client(
                    f"{served.base}/mcp", "modern", None
                ) as session:  # one failing member, listed honestly
                    listed = await session.list_tools()
        assert response.status_code == 502
        answer = response.json()
        assert answer["id"] == 9 and answer["error"]["code"] == ErrorCode.BAD_GATEWAY
        assert "secure__echo" in {tool.name for tool in listed.tools}
        assert "nocert" in str(listed.meta), listed.meta  # the partial list says which member failed
        logged = [record.getMessage() for record in caplog.records]
        unreachable = [line for line in logged if "unreachable" in line and "nocert" in line]
        # the data path's WARNING names the refused handshake too, not only the health check
        assert unreachable and "tls: " in unreachable[0] and "tls.client_cert" in unreachable[0], logged


async def test_every_replica_of_a_pool_is_reached_with_the_certificate(pki: Pki) -> None:
    with mtls_backend(pki) as first, mtls_backend(pki) as second:
        config = parse_config(
            f'[[servers]]\nname = "pooled"\nurl = ["{first}", "{second}"]\n'
            f'tls = {{ client_cert = "{pki.client_cert}", client_key = "{pki.client_key}", ca_bundle = "{pki.ca}" }}\n'
        )
        gateway = build_gateway(config)
        with serve_app(gateway.app) as served:
            for era in ERAS:
                async with client(f"{served.base}/mcp/pooled", era, None) as session:
                    for n in range(4):  # balanced over both replicas
                        result = await session.call_tool("echo", {"text": f"{era} {n}"})
                        assert result.content[0].text == f"{era} {n}"  # type: ignore[union-attr]

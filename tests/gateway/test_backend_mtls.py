"""mTLS to backends: a backend that requires a client certificate from a test CA, reached with and without one.

The CA, the backend's server certificate and the gateway's client certificate are generated here
(`cryptography`); the backend is an SDK `MCPServer` under uvicorn with `ssl_cert_reqs=CERT_REQUIRED`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from mcp_middleware.gateway.health_check import probe_gateway
from tests.conftest import ERAS, Era, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write(
    directory: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def make_pki(directory: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-middleware test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, _ = _write(directory, "ca", ca, ca_key)

    def leaf(name: str, usage: x509.ObjectIdentifier, san: x509.GeneralName) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return _write(directory, name, certificate, key)

    server_cert, server_key = leaf(
        "server", ExtendedKeyUsageOID.SERVER_AUTH, x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    )
    client_cert, client_key = leaf("gateway", ExtendedKeyUsageOID.CLIENT_AUTH, x509.DNSName("gateway.test"))
    return Pki(ca_file, server_cert, server_key, client_cert, client_key)


@contextlib.contextmanager
def mtls_backend(pki: Pki) -> Iterator[str]:
    """An SDK server over HTTPS that requires a client certificate signed by the test CA; its MCP URL."""
    port = free_port()
    config = uvicorn.Config(
        build_server().streamable_http_app(),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="on",
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the mTLS backend did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(10)


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

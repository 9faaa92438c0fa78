"""A test PKI (`make_pki`: a CA, a server and a client certificate) and an ASGI app under uvicorn over HTTPS.

with serve_tls(app, pki) as base:                          # https://127.0.0.1:port, server cert by the test CA
with serve_tls(app, pki, client_cert=True) as base:        # and a client certificate by that CA required
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.types import ASGIApp

from tests.conftest import free_port
from tests.servers import build_server
from tests.support.serving import serve_in_thread

__all__ = ["Pki", "make_pki", "mtls_backend", "serve_tls"]


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
def serve_tls(app: ASGIApp, pki: Pki, *, client_cert: bool = False) -> Iterator[str]:
    """Serve `app` (lifespan on) over HTTPS on a free loopback port until the block ends; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="on",
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_cert else ssl.CERT_NONE,
    )
    with serve_in_thread(uvicorn.Server(config), name=f"uvicorn-tls-{port}", patience=15):
        yield f"https://127.0.0.1:{port}"


@contextlib.contextmanager
def mtls_backend(pki: Pki) -> Iterator[str]:
    """An SDK server over HTTPS that requires a client certificate signed by the test CA; its MCP URL."""
    with serve_tls(build_server().streamable_http_app(), pki, client_cert=True) as base:
        yield f"{base}/mcp"

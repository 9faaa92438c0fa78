"""Attacker: registers nothing, just uses an HTTPS URL it controls as `client_id`, so the authorization
server fetches it. It serves an endless document (memory exhaustion), a compressed bomb, or a DNS name
that answers a public address to the check and a private one to the connection (rebinding, SSRF).

Real HTTPS servers on loopback. The DNS answers are the one thing mocked: no real name can be made to
rebind here, so a test resolver answers (and counts); the host name itself (`*.invalid`) can never be
resolved by the system, so a second resolution by the HTTP client would fail the fetch.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from tests.auth.conftest import REDIRECT_URI, serve_late
from tests.auth.test_authorization_server import pkce
from tests.conftest import free_port
from tests.support.serving import serve_in_thread

pytestmark = pytest.mark.anyio

NAME = "client-docs.invalid"
"""RFC 6761: `.invalid` never resolves, so only the test resolver can turn it into an address."""


@dataclass
class DocumentSite:
    """An HTTPS site for client documents, with the hostile variants an attacker would serve."""

    port: int = 0
    ca_file: str = ""
    streamed: int = 0
    hosts: list[str] = field(default_factory=list)

    def url(self, name: str, host: str = NAME) -> str:
        return f"https://{host}:{self.port}/clients/{name}"

    def document(self, name: str, host: str = NAME) -> dict[str, Any]:
        return {
            "client_id": self.url(name, host),
            "client_name": "Attacker",
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
        }

    async def good(self, request: Request) -> Response:
        self.hosts.append(request.headers["host"])
        return Response(orjson.dumps(self.document("good")), media_type="application/json")

    async def endless(self, request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"client_name": "'
            for _ in range(4096):  # 64 MiB if anyone read it all
                # Writes to a connection the reader closed are dropped without blocking: stop counting then
                # (else, on a loaded machine, the generator runs to its end before the disconnect arrives).
                if await request.is_disconnected():
                    break
                self.streamed += 16 * 1024
                yield b"x" * (16 * 1024)
            yield b'"}'

        return StreamingResponse(chunks(), media_type="application/json")  # chunked: no Content-Length

    async def declared(self, request: Request) -> Response:
        return Response(b"{}" + b" " * (65 * 1024), media_type="application/json")  # Content-Length says it all

    async def bomb(self, request: Request) -> Response:
        body = gzip.compress(orjson.dumps(self.document("bomb")) + b" " * (50 * 1024 * 1024))
        return Response(body, media_type="application/json", headers={"content-encoding": "gzip"})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/clients/good", self.good),
                Route("/clients/endless", self.endless),
                Route("/clients/declared", self.declared),
                Route("/clients/bomb", self.bomb),
            ]
        )


def certificate_for(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate valid for the DNS name only (no IP address): verification passes only
    if the TLS client checks the name, i.e. the fetch sent the name as SNI while connecting to the IP."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocumentSite]:
    cert_file, key_file = certificate_for(tmp_path_factory.mktemp("tls"), NAME)
    documents = DocumentSite(port=free_port(), ca_file=str(cert_file))
    config = uvicorn.Config(
        documents.app(),
        host="127.0.0.1",
        port=documents.port,
        log_level="warning",
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
    )
    with serve_in_thread(uvicorn.Server(config), name="uvicorn-documents"):
        yield documents


class Rebinding:
    """A test resolver (see the module docstring): answers from `answers` in turn, and counts."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


@contextlib.asynccontextmanager
async def authorization_server(
    serve: Any, site: DocumentSite, resolver: Rebinding, *, allow_private: bool = True
) -> AsyncIterator[tuple[str, EmbeddedAuthorizationServer]]:
    async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=site.ca_file)) as fetcher:
        served, slot = serve_late(serve, Starlette())
        server = EmbeddedAuthorizationServer(
            issuer=served.base,
            auto_approve=True,
            client_id_metadata_documents=True,
            allow_private_metadata_hosts=allow_private,
            metadata_document_resolver=resolver,
            http_client=fetcher,
        )
        slot.app = server
        yield served.base, server


async def authorize(base: str, client_id: str) -> httpx2.Response:
    _, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.get(f"{base}/authorize", params=params)


async def test_the_connection_goes_to_the_checked_address_and_the_name_is_resolved_once(
    serve: Any, site: DocumentSite
) -> None:
    resolver = Rebinding(["127.0.0.1"], ["192.0.2.66"])  # second answer: somewhere else entirely
    async with authorization_server(serve, site, resolver) as (base, server):
        answer = await authorize(base, site.url("good"))
    assert answer.status_code == 302, answer.text
    assert "code=" in answer.headers["location"]
    assert resolver.asked == [(NAME, site.port)], "resolved exactly once"
    assert site.hosts[-1] == f"{NAME}:{site.port}", "the original Host header, while connected to the IP"
    assert site.url("good") in server.store.clients  # type: ignore[attr-defined]


async def test_a_name_with_any_private_answer_is_refused_before_any_connection(serve: Any, site: DocumentSite) -> None:
    before = len(site.hosts)
    resolver = Rebinding(["93.184.216.34", "127.0.0.1"])
    async with authorization_server(serve, site, resolver, allow_private=False) as (base, _):
        answer = await authorize(base, site.url("good"))
    assert answer.status_code == 400 and "not public" in answer.json()["error_description"]
    assert len(site.hosts) == before and resolver.asked == [(NAME, site.port)]


async def test_an_endless_document_is_cut_off_at_the_bound(serve: Any, site: DocumentSite) -> None:
    async with authorization_server(serve, site, Rebinding(["127.0.0.1"])) as (base, _):
        started = time.monotonic()
        answer = await authorize(base, site.url("endless"))
    assert answer.status_code == 400
    assert answer.json()["error_description"] == "Client metadata document: too large"
    assert time.monotonic() - started < 10
    # The reader stopped past 64 KiB and closed the connection: the server could only push what
    # loopback socket buffers hold, far from the 64 MiB it would have sent.
    assert site.streamed < 16 * 1024 * 1024, site.streamed


@pytest.mark.parametrize(
    ("name", "reason"), [("declared", "too large"), ("bomb", "must not be compressed")], ids=["content-length", "gzip"]
)
async def test_declared_and_compressed_giants_are_refused_without_reading(
    serve: Any, site: DocumentSite, name: str, reason: str
) -> None:
    async with authorization_server(serve, site, Rebinding(["127.0.0.1"])) as (base, _):
        answer = await authorize(base, site.url(name))
    assert answer.status_code == 400
    assert answer.json()["error_description"] == f"Client metadata document: {reason}"


def test_the_rebinding_resolver_really_answers_differently() -> None:
    """The double in the tests above is what it claims: a second question gets the second answer."""
    import anyio

    resolver = Rebinding(["127.0.0.1"], ["192.0.2.66"])
    first = anyio.run(resolver, NAME, 443)
    second = anyio.run(resolver, NAME, 443)
    assert (first, second) == (["127.0.0.1"], ["192.0.2.66"])
    assert all(ipaddress.ip_address(a) for a in [*first, *second])

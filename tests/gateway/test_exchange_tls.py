"""TLS where the gateway is the client: a token endpoint with a private CA (and one wanting a client certificate),
and readiness that sees a backend refusing the gateway's certificate as the data path sees it.

The CA and certificates are made by `make_pki` (tests/gateway/test_backend_mtls.py); the token endpoint is
the authlib RFC 8693 server of tests/support/token_exchange.py served over HTTPS; the mTLS backends are SDK
`MCPServer`s under uvicorn with `ssl_cert_reqs=CERT_REQUIRED`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from mcp_middleware.gateway.health_check import probe_gateway
from tests.conftest import ERAS, Era, Served, serve_app
from tests.gateway.test_gateway import client
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers
from tests.support.tls_serving import Pki, make_pki, mtls_backend, serve_tls
from tests.support.token_exchange import GATEWAY_SECRET, GuardedBackend, IssuingServer
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

AUDIENCE = "https://saas.test/mcp"

EXCHANGE = """
[auth]
mode = "static"
[auth.tokens]
"alice-token" = {{ subject = "alice", scopes = [] }}

[[servers]]
name = "saas"
url = "{backend}"
[servers.auth.exchange]
token_endpoint = "{endpoint}"
audience = "{audience}"
client_id = "gateway"
client_secret = "{secret}"
{tls}
"""


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def stranger(tmp_path: Path) -> Pki:
    """Another CA and its certificates: a client certificate the backend does not trust, a CA we do not."""
    (tmp_path / "stranger").mkdir()
    return make_pki(tmp_path / "stranger")


@contextlib.contextmanager
def exchanging(
    pki: Pki, tls: str, *, idp_wants_cert: bool = False
) -> Iterator[tuple[IssuingServer, GuardedBackend, Served]]:
    """A gateway exchanging tokens at an HTTPS token endpoint (the test CA's certificate), `tls` its settings."""
    issuer = IssuingServer(callers={"alice-token": "alice"}, audiences={AUDIENCE})
    backend = GuardedBackend(build_server().streamable_http_app(), issuer, audience=AUDIENCE)
    with serve_tls(issuer.app, pki, client_cert=idp_wants_cert) as idp, serve_app(backend) as remote:
        config = parse_config(
            EXCHANGE.format(
                backend=remote.mcp_url, endpoint=f"{idp}/token", audience=AUDIENCE, secret=GATEWAY_SECRET, tls=tls
            )
        )
        with serve_app(build_gateway(config).app) as served:
            yield issuer, backend, served


async def _raw_call(served: Served, request_id: object) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{served.base}/mcp/saas",
            content=modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, request_id=request_id),
            headers={**modern_headers("tools/call", "echo"), "authorization": "Bearer alice-token"},
        )


@pytest.mark.parametrize("era", ERAS)
async def test_a_token_endpoint_with_a_private_ca_is_reached_with_its_ca_bundle(era: Era, pki: Pki) -> None:
    with exchanging(pki, f'ca_bundle = "{pki.ca}"') as (issuer, backend, served):
        async with client(f"{served.base}/mcp/saas", era, "alice-token") as session:
            for n in range(3):
                result = await session.call_tool("echo", {"text": f"over tls {n}"})
                assert result.content[0].text == f"over tls {n}"  # type: ignore[union-attr]
        assert issuer.exchanges("alice") == 1
        assert all(seen.issued is not None and seen.issued.subject == "alice" for seen in backend.calls())


async def test_without_the_ca_bundle_the_call_is_a_json_rpc_502_with_the_id_and_never_reaches_the_backend(
    pki: Pki, stranger: Pki
) -> None:
    for tls in ("", f'ca_bundle = "{stranger.ca}"'):  # the system's CAs, or the wrong CA
        with exchanging(pki, tls) as (issuer, backend, served):
            for request_id in (7, "call-8"):
                response = await _raw_call(served, request_id)
                assert response.status_code == 502, response.text
                assert response.headers["content-type"].startswith("application/json")
                answer = response.json()
                assert answer["id"] == request_id and answer["error"]["code"] == ErrorCode.BAD_GATEWAY
                assert "TLS" in answer["error"]["message"] and "token endpoint" in answer["error"]["message"]
                assert answer["error"]["data"]["mayHaveRun"] is False
            assert issuer.requests == [] and backend.calls() == []


async def test_a_token_endpoint_that_requires_a_client_certificate(pki: Pki) -> None:
    with_cert = f'ca_bundle = "{pki.ca}"\nclient_cert = "{pki.client_cert}"\nclient_key = "{pki.client_key}"'
    with exchanging(pki, with_cert, idp_wants_cert=True) as (issuer, _, served):
        response = await _raw_call(served, 1)
        assert response.status_code == 200 and issuer.exchanges("alice") == 1
    with exchanging(pki, f'ca_bundle = "{pki.ca}"', idp_wants_cert=True) as (issuer, _, served):
        response = await _raw_call(served, 2)
        assert response.status_code == 502 and response.json()["id"] == 2
        assert "TLS" in response.json()["error"]["message"] and issuer.requests == []


# --- readiness ---------------------------------------------------------------------------------------


def _mtls_config(url: str, trusted: Pki, client: Pki | None, *, name: str = "secure") -> str:
    """A server at `url` (TOML: a string or a list) trusting `trusted`'s CA, with `client`'s certificate."""
    cert = f', client_cert = "{client.client_cert}", client_key = "{client.client_key}"' if client else ""
    return f'[[servers]]\nname = "{name}"\nurl = {url}\ntls = {{ ca_bundle = "{trusted.ca}"{cert} }}\n'


def _readyz(served: Served) -> httpx2.Response:
    return httpx2.get(f"{served.base}/readyz", timeout=30)


@pytest.mark.parametrize("certificate", ["none", "another CA's"])
def test_readyz_is_not_ready_and_says_tls_when_the_backend_refuses_the_gateways_certificate(
    certificate: str, pki: Pki, stranger: Pki
) -> None:
    with mtls_backend(pki) as url:
        client_pki = None if certificate == "none" else stranger
        with serve_app(build_gateway(parse_config(_mtls_config(f'"{url}"', pki, client_pki))).app) as served:
            response = _readyz(served)
            assert response.status_code == 503, response.text
            backends = response.json()["checks"]["backends"]
            assert backends["ok"] is False
            assert "secure: tls: the server closed the connection after the handshake" in backends["detail"], backends
        with serve_app(build_gateway(parse_config(_mtls_config(f'"{url}"', pki, pki))).app) as served:
            response = _readyz(served)  # the premise: with its certificate the same backend is ready
            assert response.status_code == 200, response.text


def test_readyz_says_tls_when_the_backends_certificate_is_not_trusted(pki: Pki, stranger: Pki) -> None:
    with mtls_backend(pki) as url:
        text = _mtls_config(f'"{url}"', stranger, pki)  # trusts another CA
        with serve_app(build_gateway(parse_config(text)).app) as served:
            response = _readyz(served)
            assert response.status_code == 503
            detail = response.json()["checks"]["backends"]["detail"]
            assert "secure: tls: the server's certificate is not trusted" in detail, detail


async def test_a_pool_whose_replicas_refuse_the_certificate_is_not_ready_and_says_tls(pki: Pki) -> None:
    with mtls_backend(pki) as first, mtls_backend(pki) as second:
        text = _mtls_config(f'["{first}", "{second}"]', pki, None) + "probe_interval = 0.2\nprobe_failures = 1\n"
        with serve_app(build_gateway(parse_config(text)).app) as served:
            await until(lambda: "0/2 replicas up" in _readyz(served).json()["checks"]["pools"]["detail"], 30.0, 0.2)
            response = _readyz(served)
            assert response.status_code == 503
            pools = response.json()["checks"]["pools"]
            assert pools["ok"] is False
            assert pools["detail"].count("last: tls: the server closed the connection after the handshake") == 2


async def test_the_health_check_names_a_refused_handshake_tls(pki: Pki, stranger: Pki) -> None:
    with mtls_backend(pki) as url:
        text = _mtls_config(f'"{url}"', pki, None) + _mtls_config(f'"{url}"', stranger, pki, name="untrusted")
        found = {health.name: health for health in await probe_gateway(build_gateway(parse_config(text)), patience=15)}
        assert found["secure"].state == "unhealthy" and found["secure"].reason.startswith("tls: "), found["secure"]
        assert "tls.client_cert" in found["secure"].reason
        assert found["untrusted"].state == "unhealthy"
        assert found["untrusted"].reason.startswith("tls: the server's certificate is not trusted"), found["untrusted"]
        assert "tls.ca_bundle" in found["untrusted"].reason

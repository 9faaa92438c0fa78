"""Client ID metadata documents: a client whose id is an HTTPS URL, fetched by the authorization server.

The documents are served over real HTTPS (a self-signed certificate the authorization server is told
to trust), as the MCP client requires `https` for such ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_middleware.auth import AuthMiddleware
from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from tests.auth.conftest import (
    REDIRECT_URI,
    MemoryTokenStorage,
    ProgrammaticLogin,
    TlsServed,
    serve_late,
    serve_tls,
)
from tests.auth.test_authorization_server import pkce
from tests.auth.test_oauth_end_to_end import ByPath, protected_server
from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio


@dataclass
class DocumentHost:
    """Serves client metadata documents; a test edits them."""

    documents: dict[str, Any] = field(default_factory=dict)
    fetches: int = 0

    async def endpoint(self, request: Request) -> Response:
        self.fetches += 1
        document = self.documents.get(request.path_params["name"])
        return JSONResponse(document) if document is not None else Response(status_code=404)


@pytest.fixture(scope="module")
def document_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DocumentHost, TlsServed]]:
    host = DocumentHost()
    app = Starlette(routes=[Route("/clients/{name}", host.endpoint)])
    directory: Path = tmp_path_factory.mktemp("tls")
    with serve_tls(app, directory) as served:
        yield host, served


def client_document(url: str, **changes: Any) -> dict[str, Any]:
    document = {
        "client_id": url,
        "client_name": "Metadata Client",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


@pytest.fixture
async def fetcher(document_host: tuple[DocumentHost, TlsServed]) -> Any:
    """The authorization server's HTTP client for documents: trusts the test certificate; closed after the test."""
    async with document_host[1].client() as client:
        yield client


def authorization_server(base: str, fetcher: httpx2.AsyncClient, **options: Any) -> EmbeddedAuthorizationServer:
    return EmbeddedAuthorizationServer(
        issuer=base,
        auto_approve=True,
        client_id_metadata_documents=True,
        allow_private_metadata_hosts=options.pop("allow_private_metadata_hosts", True),  # the host is 127.0.0.1
        http_client=fetcher,
        **options,
    )


async def authorize(base: str, client_id: str) -> httpx2.Response:
    _, challenge = pkce()
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.get(
            f"{base}/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": REDIRECT_URI,
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )


async def test_metadata_advertises_support(
    serve: Any, document_host: tuple[DocumentHost, TlsServed], fetcher: httpx2.AsyncClient
) -> None:
    served, slot = serve_late(serve, Starlette())
    slot.app = authorization_server(served.base, fetcher)
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(f"{served.base}/.well-known/oauth-authorization-server")).json()
    assert metadata["client_id_metadata_document_supported"] is True


async def test_a_url_client_id_is_fetched_and_can_authorize(
    serve: Any, document_host: tuple[DocumentHost, TlsServed], fetcher: httpx2.AsyncClient
) -> None:
    host, tls = document_host
    url = f"{tls.base}/clients/good"
    host.documents["good"] = client_document(url)
    served, slot = serve_late(serve, Starlette())
    slot.app = authorization_server(served.base, fetcher)
    response = await authorize(served.base, url)
    assert response.status_code == 302
    assert "code" in parse_qs(urlsplit(response.headers["location"]).query)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"client_id": "https://other.example/clients/x"}, "client_id does not match"),
        ({"redirect_uris": None}, "redirect_uris"),
        ({"client_name": None}, "client_name is required"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "only public clients"),
    ],
    ids=["wrong-client-id", "no-redirect-uris", "no-name", "confidential"],
)
async def test_unusable_documents_are_refused(
    serve: Any,
    document_host: tuple[DocumentHost, TlsServed],
    fetcher: httpx2.AsyncClient,
    changes: dict[str, Any],
    reason: str,
) -> None:
    host, tls = document_host
    name = f"bad-{reason[:8].replace(' ', '-')}"
    url = f"{tls.base}/clients/{name}"
    host.documents[name] = client_document(url, **changes)
    served, slot = serve_late(serve, Starlette())
    slot.app = authorization_server(served.base, fetcher)
    response = await authorize(served.base, url)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.json()["error"] == "invalid_client"
    assert reason in response.json()["error_description"]


async def test_a_missing_document_is_refused(
    serve: Any, document_host: tuple[DocumentHost, TlsServed], fetcher: httpx2.AsyncClient
) -> None:
    served, slot = serve_late(serve, Starlette())
    slot.app = authorization_server(served.base, fetcher)
    response = await authorize(served.base, f"{document_host[1].base}/clients/nobody")
    assert response.status_code == 400
    assert "HTTP 404" in response.json()["error_description"]


async def test_documents_on_private_hosts_are_refused_by_default(
    serve: Any, document_host: tuple[DocumentHost, TlsServed], fetcher: httpx2.AsyncClient
) -> None:
    host, tls = document_host
    url = f"{tls.base}/clients/private"
    host.documents["private"] = client_document(url)
    before = host.fetches
    served, slot = serve_late(serve, Starlette())
    slot.app = authorization_server(served.base, fetcher, allow_private_metadata_hosts=False)
    response = await authorize(served.base, url)
    assert response.status_code == 400
    assert "not public" in response.json()["error_description"]
    assert host.fetches == before, "nothing was fetched from a private address (SSRF)"


@pytest.mark.parametrize("era", ERAS)
async def test_the_mcp_client_logs_in_with_a_metadata_document_instead_of_registering(
    era: Era, serve: Any, document_host: tuple[DocumentHost, TlsServed], fetcher: httpx2.AsyncClient
) -> None:
    host, tls = document_host
    url = f"{tls.base}/clients/sdk-{era}"
    host.documents[f"sdk-{era}"] = client_document(url)
    mcp_app = protected_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    auth_server = authorization_server(served.base, fetcher, scopes_supported=["mcp:read"], default_scopes=["mcp:read"])
    slot.app = AuthMiddleware(
        ByPath(mcp_app, auth_server),
        verifier=auth_server.verifier(audience=served.mcp_url),
        resource=served.mcp_url,
        authorization_servers=[served.base],
        required_scopes=["mcp:read"],
    )
    login = ProgrammaticLogin()
    provider = OAuthClientProvider(
        server_url=served.mcp_url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryTokenStorage(),
        redirect_handler=login.redirect,
        callback_handler=login.callback,
        client_metadata_url=url,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        connect(streamable_http_client(served.mcp_url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        result = await client.call_tool("whoami", {})
    assert result.content[0].text.startswith(f"dev-user via {url}")  # type: ignore[union-attr]
    assert list(auth_server.store.clients) == [url], "no dynamic registration happened"  # type: ignore[attr-defined]

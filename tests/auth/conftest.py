"""Auth test fixtures: a served MCP app whose auth is configured once its URL is known, and a real OAuth login."""

from __future__ import annotations

import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.conftest import Served, free_port, self_signed_certificate, serve_app
from tests.servers import build_server
from tests.support.requests import modern_body, modern_headers
from tests.support.serving import serve_in_thread


class Slot:
    """An ASGI app whose HTTP handler is plugged in after the server is listening.

    The resource URI and the issuer name the server's own port, which is only known once
    `serve` has picked it; lifespan goes to `lifespan_app` (the MCP app) from the start.
    """

    def __init__(self, lifespan_app: ASGIApp) -> None:
        self.lifespan_app = lifespan_app
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan_app(scope, receive, send)
            return
        assert self.app is not None, "Slot.app not set"
        await self.app(scope, receive, send)


def serve_late(serve: Callable[[ASGIApp], Served], lifespan_app: ASGIApp) -> tuple[Served, Slot]:
    slot = Slot(lifespan_app)
    return serve(slot), slot


@dataclass
class Issuer:
    """A signing key pair and the claims of a well-formed token; `token(**changes)` signs a variant."""

    key: RSAKey | ECKey
    issuer: str
    audience: str
    alg: str = "RS256"

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            "client_id": "cli-1",
            "scope": "mcp:read",
            "iat": now,
            "exp": now + 600,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, header: dict[str, Any] | None = None, **changes: Any) -> str:
        header = header if header is not None else {"alg": self.alg, "kid": self.key.kid}
        return jwt.encode(header, self.claims(**changes), self.key, algorithms=[header["alg"]])


def rsa_issuer(issuer: str, audience: str, kid: str = "rsa-1") -> Issuer:
    return Issuer(RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"}), issuer, audience)


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})


@dataclass
class MemoryTokenStorage(TokenStorage):
    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


REDIRECT_URI = "http://127.0.0.1:1/callback"
"""Never contacted: the login follows the authorization server's redirect by reading its Location."""


@dataclass
class ProgrammaticLogin:
    """The SDK's redirect/callback handlers, done by an HTTP client instead of a browser.

    `redirect` GETs the authorization URL (the server auto-approves) and keeps the query of
    the redirect to the client's callback; `callback` hands code, state and iss to the SDK.
    """

    authorizations: list[str] = field(default_factory=list)
    _result: AuthorizationCodeResult | None = None

    async def redirect(self, url: str) -> None:
        self.authorizations.append(url)
        async with httpx2.AsyncClient() as client:
            response = await client.get(url, follow_redirects=False)
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert location.startswith(REDIRECT_URI)
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert "code" in query, query
        self._result = AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    async def callback(self) -> AuthorizationCodeResult:
        assert self._result is not None
        result, self._result = self._result, None
        return result


def oauth_provider(
    server_url: str, login: ProgrammaticLogin, storage: MemoryTokenStorage | None = None
) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="test client",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage or MemoryTokenStorage(),
        redirect_handler=login.redirect,
        callback_handler=login.callback,
    )


@pytest.fixture
def login() -> ProgrammaticLogin:
    return ProgrammaticLogin()


async def post_mcp(
    url: str,
    *,
    authorization: str | bytes | None = None,
    method: str = "tools/call",
    params: dict[str, Any] | None = None,
    request_id: int = 7,
    extra_headers: list[tuple[str, str | bytes]] | None = None,
) -> httpx2.Response:
    """One raw modern-era request, as a client that sends exactly what the test says."""
    params = params if params is not None else {"name": "echo", "arguments": {"text": "hi"}}
    body, headers = modern_body(method, params, request_id), modern_headers(method, params.get("name"))
    header_list: list[tuple[str, str | bytes]] = list(headers.items())
    if authorization is not None:
        header_list.append(("authorization", authorization))
    header_list += extra_headers or []
    async with httpx2.AsyncClient(timeout=10) as client:
        return await client.post(url, content=body, headers=header_list)


def challenge_params(response: httpx2.Response) -> dict[str, str]:
    """The auth-params of a `WWW-Authenticate: Bearer …` challenge."""
    value = response.headers["www-authenticate"]
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', rest))


@dataclass
class Site:
    """One served test MCP server for a whole module; each test plugs its own middleware into `slot`."""

    served: Served
    slot: Slot
    mcp_app: ASGIApp


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    mcp_app = build_server().streamable_http_app()
    slot = Slot(mcp_app)
    with serve_app(slot) as served:
        yield Site(served, slot, mcp_app)


@dataclass
class TlsServed:
    base: str
    ca_file: str

    def client(self) -> httpx2.AsyncClient:
        """An HTTP client that trusts this server's self-signed certificate."""
        return httpx2.AsyncClient(verify=ssl.create_default_context(cafile=self.ca_file), timeout=10)


@contextlib.contextmanager
def serve_tls(app: ASGIApp, directory: Path) -> Iterator[TlsServed]:
    """`serve_app`, over HTTPS with a self-signed certificate for 127.0.0.1 (the harness serves plain HTTP only)."""
    cert_file, key_file = self_signed_certificate(directory)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)
    )
    with serve_in_thread(uvicorn.Server(config), name=f"uvicorn-tls-{port}"):
        yield TlsServed(f"https://127.0.0.1:{port}", str(cert_file))

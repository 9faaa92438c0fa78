"""The embedded authorization server, spoken to over HTTP as a client would: the happy path and every refusal."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from starlette.applications import Starlette

from mcp_middleware.auth import JwksTokenVerifier, TokenRejected
from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from tests.auth.conftest import serve_late

pytestmark = pytest.mark.anyio

REDIRECT = "http://127.0.0.1:1/callback"
RESOURCE = "http://127.0.0.1:9999/mcp"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


@dataclass
class AuthServer:
    base: str
    server: EmbeddedAuthorizationServer
    http: httpx2.AsyncClient

    async def register(self, **metadata: Any) -> str:
        body = {
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "t",
            **metadata,
        }
        response = await self.http.post(f"{self.base}/register", json=body)
        assert response.status_code == 201, response.text
        client_id: str = response.json()["client_id"]
        return client_id

    async def authorize(self, client_id: str, challenge: str | None, **params: str) -> httpx2.Response:
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "state": "st-1",
            "scope": "mcp:read",
            "resource": RESOURCE,
            **params,
        }
        if challenge is not None:
            query.setdefault("code_challenge", challenge)
            query.setdefault("code_challenge_method", "S256")
        return await self.http.get(f"{self.base}/authorize", params=query)

    async def token(self, **form: str) -> httpx2.Response:
        return await self.http.post(f"{self.base}/token", data=form)

    async def code_for(self, client_id: str) -> tuple[str, str]:
        verifier, challenge = pkce()
        return query_of(await self.authorize(client_id, challenge))["code"], verifier

    async def exchange(self, client_id: str, code: str, verifier: str, **extra: str) -> httpx2.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "resource": RESOURCE,
        }
        return await self.token(**{**form, **extra})

    async def introspect(self, token: str) -> dict[str, Any]:
        response = await self.http.post(f"{self.base}/introspect", data={"token": token}, auth=("rs", "rs-secret"))
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def auth(serve: Any) -> Any:
    served, slot = serve_late(serve, Starlette())
    server = EmbeddedAuthorizationServer(
        issuer=served.base,
        scopes_supported=["mcp:read", "admin"],
        auto_approve=True,
        introspection_clients={"rs": "rs-secret"},
    )
    slot.app = server
    async with httpx2.AsyncClient(timeout=10) as http:
        yield AuthServer(served.base, server, http)


async def test_metadata_says_what_an_mcp_client_needs(auth: AuthServer) -> None:
    response = await auth.http.get(f"{auth.base}/.well-known/oauth-authorization-server")
    metadata = response.json()
    assert response.headers["access-control-allow-origin"] == "*"
    assert metadata["issuer"] == auth.base
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["registration_endpoint"] == f"{auth.base}/register"
    assert metadata["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    jwks = (await auth.http.get(metadata["jwks_uri"])).json()
    assert [key["kid"] for key in jwks["keys"]] == [auth.server.key.kid]
    assert all("d" not in key for key in jwks["keys"]), "never the private key"


async def test_code_flow_binds_the_resource_into_the_audience(auth: AuthServer) -> None:
    client_id = await auth.register()
    verifier, challenge = pkce()
    redirect = query_of(await auth.authorize(client_id, challenge))
    assert redirect["state"] == "st-1"
    assert redirect["iss"] == auth.base
    response = await auth.exchange(client_id, redirect["code"], verifier)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"] and tokens["scope"] == "mcp:read"
    jwks_verifier = JwksTokenVerifier(jwks_uri=f"{auth.base}/jwks", issuer=auth.base, audience=RESOURCE)
    access = await jwks_verifier.check(tokens["access_token"])
    assert (access.subject, access.client_id, access.scopes, access.resource) == (
        "dev-user",
        client_id,
        ["mcp:read"],
        RESOURCE,
    )
    other = JwksTokenVerifier(jwks_uri=f"{auth.base}/jwks", issuer=auth.base, audience="http://127.0.0.1:9999/other")
    with pytest.raises(TokenRejected, match="not issued for this resource"):
        await other.check(tokens["access_token"])


async def test_pkce_verifier_mismatch_is_refused(auth: AuthServer) -> None:
    client_id = await auth.register()
    code, _ = await auth.code_for(client_id)
    response = await auth.exchange(client_id, code, pkce()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_a_missing_code_verifier_is_refused(auth: AuthServer) -> None:
    client_id = await auth.register()
    code, _ = await auth.code_for(client_id)
    response = await auth.token(
        grant_type="authorization_code", code=code, client_id=client_id, redirect_uri=REDIRECT, resource=RESOURCE
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "params",
    [
        {"code_challenge_method": "plain"},
        {"code_challenge_method": ""},
    ],
    ids=["plain", "no-method"],
)
async def test_pkce_plain_or_without_method_is_refused(auth: AuthServer, params: dict[str, str]) -> None:
    client_id = await auth.register()
    verifier = secrets.token_urlsafe(48)
    redirect = query_of(await auth.authorize(client_id, None, code_challenge=verifier, **params))
    assert redirect["error"] == "invalid_request"
    assert "code" not in redirect


async def test_an_authorization_request_without_pkce_is_refused(auth: AuthServer) -> None:
    client_id = await auth.register()
    redirect = query_of(await auth.authorize(client_id, None))
    assert redirect["error"] == "invalid_request"
    assert "PKCE" in redirect["error_description"]


async def test_code_reuse_is_refused_and_revokes_what_the_code_gave(auth: AuthServer) -> None:
    client_id = await auth.register()
    code, verifier = await auth.code_for(client_id)
    first = (await auth.exchange(client_id, code, verifier)).json()
    assert (await auth.introspect(first["access_token"]))["active"] is True
    again = await auth.exchange(client_id, code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert (await auth.introspect(first["access_token"]))["active"] is False
    refreshed = await auth.token(grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=client_id)
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


async def test_redirect_uri_mismatch_at_authorize_is_not_redirected(auth: AuthServer) -> None:
    client_id = await auth.register()
    _, challenge = pkce()
    response = await auth.authorize(client_id, challenge, redirect_uri="https://evil.example/cb")
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.json()["error"] == "invalid_request"


async def test_redirect_uri_mismatch_at_token_is_refused(auth: AuthServer) -> None:
    client_id = await auth.register(redirect_uris=[REDIRECT, "http://127.0.0.1:2/other"])
    code, verifier = await auth.code_for(client_id)
    response = await auth.token(
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        client_id=client_id,
        redirect_uri="http://127.0.0.1:2/other",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_an_unknown_client_is_refused_without_a_redirect(auth: AuthServer) -> None:
    _, challenge = pkce()
    response = await auth.authorize("no-such-client", challenge)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"
    token = await auth.token(grant_type="authorization_code", code="x", code_verifier="y" * 43, client_id="no-such")
    assert token.status_code in (400, 401)
    assert token.json()["error"] == "invalid_client"


async def test_refresh_tokens_rotate_and_reuse_ends_the_grant(auth: AuthServer) -> None:
    client_id = await auth.register()
    code, verifier = await auth.code_for(client_id)
    first = (await auth.exchange(client_id, code, verifier)).json()
    second = await auth.token(grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=client_id)
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert (await auth.introspect(rotated["access_token"]))["aud"] == RESOURCE, "the resource stays bound"
    replay = await auth.token(grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=client_id)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    after = await auth.token(grant_type="refresh_token", refresh_token=rotated["refresh_token"], client_id=client_id)
    assert after.status_code == 400, "reuse of a rotated token revokes the whole grant"
    assert (await auth.introspect(rotated["access_token"]))["active"] is False


async def test_a_token_request_for_another_resource_is_refused(auth: AuthServer) -> None:
    client_id = await auth.register()
    code, verifier = await auth.code_for(client_id)
    response = await auth.exchange(client_id, code, verifier, **{"resource": "http://127.0.0.1:9999/other"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_an_invalid_resource_is_refused_at_authorize(auth: AuthServer) -> None:
    client_id = await auth.register()
    _, challenge = pkce()
    redirect = query_of(await auth.authorize(client_id, challenge, resource="http://127.0.0.1:9999/mcp#frag"))
    assert redirect["error"] == "invalid_target"


async def test_registration_needs_redirect_uris(auth: AuthServer) -> None:
    response = await auth.http.post(f"{auth.base}/register", json={"client_name": "x"})
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_request", "invalid_client_metadata", "invalid_redirect_uri")
    garbage = await auth.http.post(
        f"{auth.base}/register", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400


async def test_a_confidential_client_authenticates_at_the_token_endpoint(auth: AuthServer) -> None:
    registered = await auth.http.post(
        f"{auth.base}/register",
        json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"},
    )
    info = registered.json()
    assert info["client_secret"]
    code, verifier = await auth.code_for(info["client_id"])
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
    wrong = await auth.http.post(f"{auth.base}/token", data=form, auth=(info["client_id"], "wrong"))
    assert wrong.status_code == 401
    right = await auth.http.post(f"{auth.base}/token", data=form, auth=(info["client_id"], info["client_secret"]))
    assert right.status_code == 200, right.text


async def test_introspection_needs_resource_server_credentials(auth: AuthServer) -> None:
    anonymous = await auth.http.post(f"{auth.base}/introspect", data={"token": "x"})
    assert anonymous.status_code == 401
    assert (await auth.introspect("garbage"))["active"] is False


async def test_the_consent_page_approves_and_denies(serve: Any) -> None:
    served, slot = serve_late(serve, Starlette())
    server = EmbeddedAuthorizationServer(issuer=served.base, scopes_supported=["mcp:read"], auto_approve=False)
    slot.app = server
    async with httpx2.AsyncClient(timeout=10) as http:
        auth = AuthServer(served.base, server, http)
        client_id = await auth.register(client_name="<script>x</script>")
        verifier, challenge = pkce()
        page = await auth.authorize(client_id, challenge)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<script>x</script>" not in page.text, "client-provided names are escaped"
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
        assert fields["client_id"] == client_id and fields["code_challenge"] == challenge and fields["consent"]
        forged = await http.post(
            f"{served.base}/authorize", data={**fields, "consent": "forged", "decision": "approve"}
        )
        assert forged.status_code == 400, "only a consent form the server rendered can approve"
        approved = query_of(
            await http.post(f"{served.base}/authorize", data={**fields, "username": "ada", "decision": "approve"})
        )
        tokens = (await auth.exchange(client_id, approved["code"], verifier)).json()
        assert (
            await JwksTokenVerifier(jwks=server.jwks(), issuer=served.base, audience=RESOURCE).check(
                tokens["access_token"]
            )
        ).subject == "ada"
        replayed = await http.post(f"{served.base}/authorize", data={**fields, "decision": "approve"})
        assert replayed.status_code == 400, "a consent form decides once"
        fields["consent"] = dict(
            re.findall(r'name="(consent)" value="([^"]*)"', (await auth.authorize(client_id, challenge)).text)
        )["consent"]
        denied = query_of(await http.post(f"{served.base}/authorize", data={**fields, "decision": "deny"}))
        assert denied["error"] == "access_denied"
        assert denied["state"] == "st-1"

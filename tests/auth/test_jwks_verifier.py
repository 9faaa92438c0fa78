"""JWT access tokens checked against a JWKS served over real HTTP: every hostile token refused, rotation works."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson
import pytest
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_middleware.auth import AuthMiddleware, JwksTokenVerifier
from mcp_middleware.core import ErrorCode
from tests.auth.conftest import Issuer, Site, challenge_params, post_mcp, serve_late
from tests.conftest import serve_app
from tests.servers import build_server

pytestmark = pytest.mark.anyio

ISSUER = "https://issuer.example"


@dataclass
class JwksHost:
    """The issuer's JWKS endpoint: its keys can rotate and it can fail on demand."""

    keys: list[dict[str, Any]]
    failing: bool = False
    hits: list[str] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.hits.append(request.url.path)
        if self.failing:
            return Response("down", status_code=503)
        return JSONResponse({"keys": self.keys})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/jwks", self.endpoint)])


@dataclass
class Setup:
    url: str
    issuer: Issuer
    host: JwksHost
    verifier: JwksTokenVerifier

    async def call(self, token: str) -> httpx2.Response:
        return await post_mcp(self.url, authorization=f"Bearer {token}")


@functools.cache
def default_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})


@dataclass
class JwksSite:
    """The issuer's JWKS host and the MCP server, served once for the module."""

    host: JwksHost
    jwks_uri: str
    site: Site


@pytest.fixture(scope="module")
def jwks_site(site: Site) -> Iterator[JwksSite]:
    host = JwksHost(keys=[])
    with serve_app(host.app()) as jwks_server:
        yield JwksSite(host, f"{jwks_server.base}/jwks", site)


def start(
    jwks_site: JwksSite, *, key: RSAKey | ECKey | None = None, alg: str = "RS256", **verifier_options: Any
) -> Setup:
    key = key or default_key()
    host = jwks_site.host
    host.keys, host.failing, host.hits = [key.as_dict(private=False)], False, []
    site = jwks_site.site
    url = site.served.mcp_url
    verifier = JwksTokenVerifier(
        jwks_uri=jwks_site.jwks_uri,
        issuer=ISSUER,
        audience=url,
        min_refetch_interval=verifier_options.pop("min_refetch_interval", 0.0),
        **verifier_options,
    )
    site.slot.app = AuthMiddleware(
        site.mcp_app, verifier=verifier, resource=url, authorization_servers=[ISSUER], cache_ttl=60
    )
    return Setup(url, Issuer(key, ISSUER, url, alg), host, verifier)


async def assert_refused(setup: Setup, token: str, description: str) -> None:
    response = await setup.call(token)
    assert response.status_code == 401, response.text
    body = orjson.loads(response.content)
    assert body["id"] == 7
    assert body["error"]["code"] == ErrorCode.UNAUTHORIZED
    assert challenge_params(response)["error"] == "invalid_token"
    assert challenge_params(response)["error_description"] == description


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_good_rs256_token_passes(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    response = await setup.call(setup.issuer.token())
    assert response.status_code == 200
    assert '"hi"' in response.text


async def test_a_good_es256_token_passes(jwks_site: JwksSite) -> None:
    setup = start(jwks_site, key=ECKey.generate_key("P-256", parameters={"kid": "ec-1"}), alg="ES256")
    assert (await setup.call(setup.issuer.token())).status_code == 200


async def test_a_token_without_kid_is_checked_against_the_keys_of_its_type(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    assert (await setup.call(setup.issuer.token(header={"alg": "RS256"}))).status_code == 200


async def test_alg_none_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    header = b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(setup.issuer.claims()).encode())
    await assert_refused(setup, f"{header}.{payload}.", "Algorithm 'none' is not accepted")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    public_pem = setup.issuer.key.as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(setup.issuer.claims()).encode())
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    await assert_refused(setup, f"{header}.{payload}.{signature}", "Algorithm 'HS256' is not accepted")


async def test_a_token_signed_by_another_key_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    impostor = Issuer(RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}), ISSUER, setup.url)
    await assert_refused(setup, impostor.token(), "Invalid signature")


async def test_garbage_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    await assert_refused(setup, "not.a.jwt", "Malformed token")
    await assert_refused(setup, "abc", "Malformed token")


async def test_expired_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    await assert_refused(setup, setup.issuer.token(exp=setup.issuer.claims()["iat"] - 120), "Token has expired")


async def test_expiry_within_the_leeway_is_accepted(jwks_site: JwksSite) -> None:
    setup = start(jwks_site, leeway=30)
    response = await setup.call(setup.issuer.token(exp=setup.issuer.claims()["iat"] - 10))
    assert response.status_code == 200


async def test_nbf_in_the_future_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    await assert_refused(setup, setup.issuer.token(nbf=setup.issuer.claims()["iat"] + 300), "Token is not yet valid")


async def test_wrong_issuer_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    await assert_refused(
        setup, setup.issuer.token(iss="https://evil.example"), "Token was issued by an untrusted issuer"
    )


async def test_wrong_audience_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    await assert_refused(
        setup, setup.issuer.token(aud="https://api.example.com"), "Token was not issued for this resource"
    )


async def test_a_token_for_another_mcp_resource_on_the_same_host_is_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    other = setup.url.replace("/mcp", "/other/mcp")
    await assert_refused(setup, setup.issuer.token(aud=other), "Token was not issued for this resource")
    await assert_refused(
        setup, setup.issuer.token(aud=[other, "https://x.example"]), "Token was not issued for this resource"
    )


async def test_audience_is_compared_in_canonical_form(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    shouting = setup.url.replace("http://", "HTTP://") + "/"
    assert (await setup.call(setup.issuer.token(aud=[shouting, "https://x.example"]))).status_code == 200


async def test_missing_required_claims_are_refused(jwks_site: JwksSite) -> None:
    setup = start(jwks_site, required_claims=("exp", "sub"))
    await assert_refused(setup, setup.issuer.token(sub=None), "Token lacks required claims: sub")
    await assert_refused(setup, setup.issuer.token(aud=None), "Token lacks required claims: aud")


async def test_unknown_kid_triggers_one_refetch_so_rotation_works(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    assert (await setup.call(setup.issuer.token())).status_code == 200
    assert len(setup.host.hits) == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "use": "sig"})
    setup.host.keys = [rotated.as_dict(private=False)]
    new_issuer = Issuer(rotated, ISSUER, setup.url)
    assert (await setup.call(new_issuer.token())).status_code == 200
    assert len(setup.host.hits) == 2


async def test_unknown_kids_are_refetched_at_most_once_per_interval(jwks_site: JwksSite) -> None:
    setup = start(jwks_site, min_refetch_interval=60)
    assert (await setup.call(setup.issuer.token())).status_code == 200
    stranger = Issuer(RSAKey.generate_key(2048, parameters={"kid": "bogus"}), ISSUER, setup.url)
    for _ in range(5):
        await assert_refused(setup, stranger.token(header={"alg": "RS256", "kid": "bogus"}), "Unknown signing key")
    assert len(setup.host.hits) == 1, "fetched once at start: the first bogus kid came too soon after it"


async def test_jwks_down_without_cached_keys_fails_closed_with_503(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    setup.host.failing = True
    response = await setup.call(setup.issuer.token())
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    body = orjson.loads(response.content)
    assert body["id"] == 7
    assert body["error"]["code"] == ErrorCode.UNAVAILABLE
    assert body["error"]["data"]["retryAfterMs"] >= 1000


async def test_jwks_unreachable_without_cached_keys_fails_closed(serve: Any) -> None:
    host = JwksHost(keys=[])
    with serve_app(host.app()) as gone:
        jwks_uri = f"{gone.base}/jwks"
    mcp_app = build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = AuthMiddleware(
        mcp_app,
        verifier=JwksTokenVerifier(jwks_uri=jwks_uri, issuer=ISSUER, audience=served.mcp_url, timeout=2),
        resource=served.mcp_url,
        authorization_servers=[ISSUER],
    )
    issuer = Issuer(RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}), ISSUER, served.mcp_url)
    response = await post_mcp(served.mcp_url, authorization=f"Bearer {issuer.token()}")
    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_jwks_down_with_cached_keys_keeps_working(jwks_site: JwksSite) -> None:
    setup = start(jwks_site, jwks_ttl=0.0)  # every check wants fresh keys
    assert (await setup.call(setup.issuer.token(sub="first"))).status_code == 200
    setup.host.failing = True
    response = await setup.call(setup.issuer.token(sub="second"))  # a new token: no verified-token cache hit
    assert response.status_code == 200
    assert len(setup.host.hits) == 2, "it tried, failed, and used the keys it had"


async def test_a_verified_token_is_not_verified_again(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    token = setup.issuer.token()
    calls = 0
    check = setup.verifier.check

    async def counting(raw: str) -> Any:
        nonlocal calls
        calls += 1
        return await check(raw)

    setup.verifier.check = counting  # type: ignore[method-assign]
    for _ in range(3):
        assert (await setup.call(token)).status_code == 200
    assert calls == 1


def test_symmetric_and_unknown_algorithms_cannot_be_configured() -> None:
    for algorithms in (["HS256"], ["none"], []):
        with pytest.raises(ValueError, match="algorithms"):
            JwksTokenVerifier(jwks={"keys": []}, issuer=ISSUER, audience="https://x/mcp", algorithms=algorithms)


async def test_concurrent_first_requests_share_one_jwks_fetch(jwks_site: JwksSite) -> None:
    setup = start(jwks_site)
    tokens = [setup.issuer.token(sub=f"user-{n}") for n in range(20)]
    results = await asyncio.gather(*(setup.verifier.check(token) for token in tokens))
    assert sorted(r.subject or "" for r in results) == sorted(f"user-{n}" for n in range(20))
    assert len(setup.host.hits) == 1

"""Tokens checked by RFC 7662 introspection against the embedded authorization server, over real HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mcp_middleware.auth import AuthMiddleware, IntrospectionTokenVerifier
from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from mcp_middleware.core import ErrorCode
from tests.auth.conftest import Site, Slot, challenge_params, post_mcp, serve_late
from tests.conftest import serve_app
from tests.servers import build_server

pytestmark = pytest.mark.anyio


class Switchable:
    """The authorization server, which a test can take down (503) or count calls to."""

    def __init__(self) -> None:
        self.server: EmbeddedAuthorizationServer | None = None
        self.down = False
        self.introspections = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/introspect":
            self.introspections += 1
            if self.down:
                await Response("maintenance", status_code=503)(scope, receive, send)
                return
        assert self.server is not None
        await self.server(scope, receive, send)


@dataclass
class Setup:
    url: str
    issuer: EmbeddedAuthorizationServer
    host: Switchable
    grant_id: str

    def token(self, *, resource: str | None = None, scope: str = "mcp:read") -> str:
        token, _ = self.issuer.issue_access_token(
            subject="alice", client_id="cli", scope=scope, resource=resource or self.url, grant_id=self.grant_id
        )
        return token


@dataclass
class IdpSite:
    host: Switchable
    base: str
    site: Site


@pytest.fixture(scope="module")
def idp_site(site: Site) -> Iterator[IdpSite]:
    host = Switchable()
    as_slot = Slot(Starlette())
    with serve_app(as_slot) as as_served:
        host.server = EmbeddedAuthorizationServer(issuer=as_served.base, introspection_clients={"rs": "rs-secret"})
        as_slot.app = host
        yield IdpSite(host, as_served.base, site)


def start(idp_site: IdpSite, **options: Any) -> Setup:
    host = idp_site.host
    host.down, host.introspections = False, 0
    site = idp_site.site
    url = site.served.mcp_url
    verifier = IntrospectionTokenVerifier(
        endpoint=f"{idp_site.base}/introspect",
        client_id=options.pop("client_id", "rs"),
        client_secret=options.pop("client_secret", "rs-secret"),
        audience=url,
        issuer=idp_site.base,
        **options,
    )
    site.slot.app = AuthMiddleware(
        site.mcp_app, verifier=verifier, resource=url, authorization_servers=[idp_site.base], cache_ttl=0.001
    )
    assert host.server is not None
    return Setup(url, host.server, host, grant_id=secrets.token_hex(8))


async def test_an_active_token_passes(idp_site: IdpSite) -> None:
    setup = start(idp_site)
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")
    assert response.status_code == 200


async def test_an_inactive_token_is_refused(idp_site: IdpSite) -> None:
    setup = start(idp_site)
    response = await post_mcp(setup.url, authorization="Bearer opaque-but-unknown")
    assert response.status_code == 401
    assert challenge_params(response)["error_description"] == "Token is not active"


async def test_a_token_of_another_resource_is_refused(idp_site: IdpSite) -> None:
    setup = start(idp_site)
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token(resource='https://other.example/mcp')}")
    assert response.status_code == 401
    assert challenge_params(response)["error_description"] == "Token was not issued for this resource"


async def test_a_revoked_grant_is_refused_once_the_cache_expires(idp_site: IdpSite) -> None:
    setup = start(idp_site, cache_ttl=0.001)
    token = setup.token()
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200
    setup.issuer.store.revoke_grant(setup.grant_id)
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 401


async def test_positive_results_are_cached(idp_site: IdpSite) -> None:
    setup = start(idp_site, cache_ttl=60)
    token = setup.token()
    for _ in range(3):
        assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200
    assert setup.host.introspections == 1


async def test_negative_results_are_cached_briefly(idp_site: IdpSite) -> None:
    setup = start(idp_site, negative_ttl=60)
    for _ in range(3):
        assert (await post_mcp(setup.url, authorization="Bearer unknown")).status_code == 401
    assert setup.host.introspections == 1


async def test_introspection_down_fails_closed_with_503(idp_site: IdpSite) -> None:
    setup = start(idp_site, retry_after=7)
    setup.host.down = True
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert orjson.loads(response.content)["error"]["code"] == ErrorCode.UNAVAILABLE


async def test_introspection_down_keeps_cached_results_working(idp_site: IdpSite) -> None:
    setup = start(idp_site, cache_ttl=60)
    token = setup.token()
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200
    setup.host.down = True
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200


async def test_wrong_resource_server_credentials_never_let_a_token_through(idp_site: IdpSite) -> None:
    setup = start(idp_site, client_secret="wrong")
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")
    assert response.status_code == 503


async def test_client_secret_post_authentication(idp_site: IdpSite) -> None:
    setup = start(idp_site, auth_method="client_secret_post")
    assert (await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")).status_code == 200


async def test_an_introspection_answer_that_is_not_json_fails_closed(serve: Any) -> None:
    async def broken(request: Request) -> Response:
        return Response("<html>oops</html>", media_type="text/html")

    bad = serve(Starlette(routes=[Route("/introspect", broken, methods=["POST"])]))
    mcp_app = build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = AuthMiddleware(
        mcp_app,
        verifier=IntrospectionTokenVerifier(endpoint=f"{bad.base}/introspect", audience=served.mcp_url),
        resource=served.mcp_url,
        authorization_servers=[bad.base],
    )
    assert (await post_mcp(served.mcp_url, authorization="Bearer t")).status_code == 503


async def test_results_without_an_audience_are_refused_by_default(serve: Any) -> None:
    async def no_audience(request: Request) -> Response:
        return JSONResponse({"active": True, "sub": "x", "scope": "mcp:read"})

    idp = serve(Starlette(routes=[Route("/introspect", no_audience, methods=["POST"])]))
    mcp_app = build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    slot.app = AuthMiddleware(
        mcp_app,
        verifier=IntrospectionTokenVerifier(endpoint=f"{idp.base}/introspect", audience=served.mcp_url),
        resource=served.mcp_url,
        authorization_servers=[idp.base],
    )
    response = await post_mcp(served.mcp_url, authorization="Bearer t")
    assert response.status_code == 401
    assert challenge_params(response)["error_description"] == "Token names no audience"

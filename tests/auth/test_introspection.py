"""Tokens checked by RFC 7662 introspection against the embedded authorization server, over real HTTP."""

from __future__ import annotations

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
from tests.auth.conftest import challenge_params, post_mcp, serve_late
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

    def token(self, *, resource: str | None = None, scope: str = "mcp:read") -> str:
        token, _ = self.issuer.issue_access_token(
            subject="alice", client_id="cli", scope=scope, resource=resource or self.url, grant_id="g-1"
        )
        return token


def start(serve: Any, **options: Any) -> Setup:
    host = Switchable()
    as_served, as_slot = serve_late(serve, Starlette())
    host.server = EmbeddedAuthorizationServer(issuer=as_served.base, introspection_clients={"rs": "rs-secret"})
    as_slot.app = host
    mcp_app = build_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    verifier = IntrospectionTokenVerifier(
        endpoint=f"{as_served.base}/introspect",
        client_id=options.pop("client_id", "rs"),
        client_secret=options.pop("client_secret", "rs-secret"),
        audience=served.mcp_url,
        issuer=as_served.base,
        **options,
    )
    slot.app = AuthMiddleware(
        mcp_app, verifier=verifier, resource=served.mcp_url, authorization_servers=[as_served.base], cache_ttl=0.001
    )
    return Setup(served.mcp_url, host.server, host)


async def test_an_active_token_passes(serve: Any) -> None:
    setup = start(serve)
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")
    assert response.status_code == 200


async def test_an_inactive_token_is_refused(serve: Any) -> None:
    setup = start(serve)
    response = await post_mcp(setup.url, authorization="Bearer opaque-but-unknown")
    assert response.status_code == 401
    assert challenge_params(response)["error_description"] == "Token is not active"


async def test_a_token_of_another_resource_is_refused(serve: Any) -> None:
    setup = start(serve)
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token(resource='https://other.example/mcp')}")
    assert response.status_code == 401
    assert challenge_params(response)["error_description"] == "Token was not issued for this resource"


async def test_a_revoked_grant_is_refused_once_the_cache_expires(serve: Any) -> None:
    setup = start(serve, cache_ttl=0.001)
    token = setup.token()
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200
    setup.issuer.store.revoke_grant("g-1")
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 401


async def test_positive_results_are_cached(serve: Any) -> None:
    setup = start(serve, cache_ttl=60)
    token = setup.token()
    for _ in range(3):
        assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200
    assert setup.host.introspections == 1


async def test_negative_results_are_cached_briefly(serve: Any) -> None:
    setup = start(serve, negative_ttl=60)
    for _ in range(3):
        assert (await post_mcp(setup.url, authorization="Bearer unknown")).status_code == 401
    assert setup.host.introspections == 1


async def test_introspection_down_fails_closed_with_503(serve: Any) -> None:
    setup = start(serve, retry_after=7)
    setup.host.down = True
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert orjson.loads(response.content)["error"]["code"] == ErrorCode.UNAVAILABLE


async def test_introspection_down_keeps_cached_results_working(serve: Any) -> None:
    setup = start(serve, cache_ttl=60)
    token = setup.token()
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200
    setup.host.down = True
    assert (await post_mcp(setup.url, authorization=f"Bearer {token}")).status_code == 200


async def test_wrong_resource_server_credentials_never_let_a_token_through(serve: Any) -> None:
    setup = start(serve, client_secret="wrong")
    response = await post_mcp(setup.url, authorization=f"Bearer {setup.token()}")
    assert response.status_code == 503


async def test_client_secret_post_authentication(serve: Any) -> None:
    setup = start(serve, auth_method="client_secret_post")
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

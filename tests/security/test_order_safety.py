"""Middleware order is a trap (issue 15, item 7): a cache or rate limiter outside auth must not leak or merge.

Starlette makes the LAST middleware added the OUTERMOST. Typed in the README's old "outermost
first" order, `add_middleware` puts the cache outside auth: it decides hit or miss before anyone
has checked a token. The attack: alice lists her (private, filtered) tools; then a caller with no
token asks the same question and must not get alice's answer from the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from mcp.server.auth.settings import AuthSettings
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer

import mcp_middleware
from mcp_middleware import (
    AuthMiddleware,
    AuthOptions,
    BucketPolicy,
    CircuitBreakerMiddleware,
    RateLimitMiddleware,
    ResponseCacheMiddleware,
    TracingMiddleware,
    stack,
)
from mcp_middleware.ratelimit import global_key
from tests.auth.conftest import post_mcp
from tests.conftest import ERAS, Era
from tests.security.idp import ISSUER, RESOURCE, Idp, protected_backend, serve_idp
from tests.support.requests import legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    with serve_idp() as served:
        yield served


def auth_options(idp: Idp) -> AuthOptions:
    return {
        "verifier": idp.verifier(),
        "resource": RESOURCE,
        "required_scopes": ["mcp:read"],
        "scopes": {"tools/call:admin_*": ["admin"]},
        "filter_lists": True,
    }


PER_USER = BucketPolicy(name="per-user", rate=100.0, capacity=100.0)


def readme_order_app(idp: Idp, server: MCPServer | None = None) -> Any:
    """The stack typed in the order the README used to list it, "outermost first", one add_middleware per line."""
    app = (server or protected_backend()).streamable_http_app()
    app.add_middleware(TracingMiddleware)
    app.add_middleware(AuthMiddleware, **auth_options(idp))
    app.add_middleware(RateLimitMiddleware, policies=[PER_USER])
    app.add_middleware(ResponseCacheMiddleware)
    app.add_middleware(CircuitBreakerMiddleware)
    return app  # Starlette runs it as: breaker → cache → rate limit → auth → tracing → app


def documented_order_app(idp: Idp) -> Any:
    """What the docs show now: with add_middleware, the innermost first (the last one added is the outermost)."""
    app = protected_backend().streamable_http_app()
    app.add_middleware(CircuitBreakerMiddleware)
    app.add_middleware(ResponseCacheMiddleware)
    app.add_middleware(RateLimitMiddleware, policies=[PER_USER])
    app.add_middleware(AuthMiddleware, **auth_options(idp))
    app.add_middleware(TracingMiddleware)
    return app


def stacked_app(idp: Idp) -> Any:
    return stack(
        protected_backend().streamable_http_app(),
        tracing=True,
        breaker=True,  # the keyword order does not matter: stack() decides it
        cache={"ttl": 60},
        auth=auth_options(idp),
        ratelimit={"policies": [PER_USER]},
    )


def tool_names(response: httpx2.Response) -> list[str]:
    return [tool["name"] for tool in json_of(response)["result"]["tools"]]


async def list_tools(url: str, token: str | None, request_id: int = 7) -> httpx2.Response:
    authorization = f"Bearer {token}" if token is not None else None
    return await post_mcp(url, authorization=authorization, method="tools/list", params={}, request_id=request_id)


def errors_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.ERROR]


async def test_a_caller_without_a_token_never_gets_alices_cached_list(
    idp: Idp, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="mcp_middleware")
    served = serve(readme_order_app(idp))
    alice = idp.token("alice", "mcp:read admin")

    mine = await list_tools(served.mcp_url, alice)
    assert mine.status_code == 200
    assert "admin_reset" in tool_names(mine), "alice is an admin: she sees the admin tool"

    anonymous = await list_tools(served.mcp_url, None, request_id=8)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers.get("x-mcp-cache") != "hit"
    assert b"admin_reset" not in anonymous.content
    assert orjson.loads(anonymous.content)["id"] == 8

    bob = await list_tools(served.mcp_url, idp.token("bob", "mcp:read"), request_id=9)
    assert bob.status_code == 200
    assert tool_names(bob) == ["echo"], "bob is no admin: neither the backend's list nor alice's"
    assert bob.headers.get("x-mcp-cache") != "hit"

    # Both order-sensitive middlewares said so, once each, and named the fix.
    (cache_error,) = errors_of(caplog, "mcp_middleware.cache")
    assert "add it BEFORE AuthMiddleware" in cache_error
    assert "mcp_middleware.stack" in cache_error
    (limit_error,) = errors_of(caplog, "mcp_middleware.ratelimit")
    assert "add it BEFORE AuthMiddleware" in limit_error


async def test_once_found_outside_auth_the_cache_stays_off(idp: Idp, serve: Any) -> None:
    app = readme_order_app(idp)
    served = serve(app)
    alice = idp.token("alice", "mcp:read admin")
    answers = [await list_tools(served.mcp_url, alice, request_id) for request_id in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    # The first was a miss that was not stored (it is found out once the answer is complete); after
    # that the cache takes no part: neither hit nor miss.
    assert [answer.headers.get("x-mcp-cache") for answer in answers] == ["miss", None, None]
    anonymous = await list_tools(served.mcp_url, None, 5)
    assert anonymous.status_code == 401


async def test_a_legacy_session_id_without_a_token_gets_no_cached_answer(idp: Idp, serve: Any) -> None:
    """Legacy era: hits are answered only on a live session, so the attacker also presents alice's session id."""
    served = serve(readme_order_app(idp))
    alice = {"authorization": f"Bearer {idp.token('alice', 'mcp:read admin')}"}
    async with httpx2.AsyncClient(headers=alice, timeout=10) as http:
        session = await legacy_session(http, served.mcp_url)
        for request_id in (1, 2):
            mine = await legacy_post(http, served.mcp_url, session, "tools/list", request_id)
            assert mine.status_code == 200
            assert "admin_reset" in tool_names(mine)
    async with httpx2.AsyncClient(timeout=10) as http:
        stolen = await legacy_post(http, served.mcp_url, session, "tools/list", 3)
    assert stolen.status_code == 401, stolen.text
    assert b"admin_reset" not in stolen.content
    assert stolen.headers.get("x-mcp-cache") != "hit"


async def test_the_sdks_own_auth_inside_the_cache_is_noticed_too(
    idp: Idp, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only our AuthMiddleware: any layer that leaves an authenticated `scope["user"]` (here the SDK's)."""
    caplog.set_level(logging.ERROR, logger="mcp_middleware")
    server = MCPServer(
        "sdk-auth",
        auth=AuthSettings(
            issuer_url=ISSUER,  # type: ignore[arg-type]
            resource_server_url=RESOURCE,  # type: ignore[arg-type]
            required_scopes=["mcp:read"],
            validate_token_resource=False,  # the JWKS verifier checks the audience itself
        ),
        token_verifier=idp.verifier(),
        cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="private")},
    )

    @server.tool()
    def whoami() -> str:
        return "someone"

    served = serve(ResponseCacheMiddleware(server.streamable_http_app()))
    mine = await list_tools(served.mcp_url, idp.token("alice"))
    assert mine.status_code == 200, mine.text
    anonymous = await list_tools(served.mcp_url, None, 8)
    assert anonymous.status_code == 401
    assert anonymous.headers.get("x-mcp-cache") != "hit"
    assert len(errors_of(caplog, "mcp_middleware.cache")) == 1


@pytest.mark.parametrize("build", [documented_order_app, stacked_app], ids=["add_middleware", "stack"])
async def test_in_the_right_order_the_cache_serves_each_caller_their_own(
    build: Any, idp: Idp, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="mcp_middleware")
    served = serve(build(idp))
    alice, bob = idp.token("alice", "mcp:read admin"), idp.token("bob", "mcp:read")

    first = await list_tools(served.mcp_url, alice, 1)
    again = await list_tools(served.mcp_url, alice, 2)
    assert (first.headers["x-mcp-cache"], again.headers["x-mcp-cache"]) == ("miss", "hit")
    assert tool_names(again) == ["echo", "admin_reset"]
    assert json_of(again)["id"] == 2

    assert (await list_tools(served.mcp_url, None, 3)).status_code == 401
    theirs = await list_tools(served.mcp_url, bob, 4)
    assert theirs.status_code == 200
    assert tool_names(theirs) == ["echo"]
    assert errors_of(caplog, "mcp_middleware.cache") == errors_of(caplog, "mcp_middleware.ratelimit") == []


@pytest.mark.parametrize("era", ERAS)
async def test_stack_serves_both_eras_with_a_real_client(era: Era, idp: Idp, serve: Any) -> None:
    from mcp.client.streamable_http import streamable_http_client

    from tests.conftest import connect

    served = serve(stacked_app(idp))
    headers = {"authorization": f"Bearer {idp.token('alice', 'mcp:read admin')}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        connect(streamable_http_client(served.mcp_url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        assert [tool.name for tool in (await client.list_tools()).tools] == ["echo", "admin_reset"]
        assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]


def test_stack_builds_the_recommended_order_whatever_the_keyword_order(idp: Idp) -> None:
    built = stacked_app(idp)
    assert repr(built) == "<McpStack tracing → auth → ratelimit → cache → breaker → app>"
    assert built.app is built.tracing
    assert built.tracing.app is built.auth
    assert built.auth.app is built.ratelimit
    assert built.ratelimit.app is built.cache
    assert built.cache.app is built.breaker
    assert built.breaker.app is built.inner
    assert built.cache.ttl == 60


def test_stack_leaves_out_what_is_not_given_and_shares_the_core_config() -> None:
    from mcp_middleware import CoreConfig

    config = CoreConfig(paths=("/tools/mcp",))
    inner = protected_backend().streamable_http_app()
    built = stack(inner, cache=True, breaker={"config": CoreConfig(paths=("/other",))}, config=config)
    assert (built.auth, built.ratelimit, built.tracing) == (None, None, None)
    assert built.app is built.cache and built.cache.app is built.breaker and built.breaker.app is inner
    assert built.cache.config is config
    assert built.breaker.config.paths == ("/other",), "a layer's own config wins"
    assert repr(stack(inner)) == "<McpStack app>"


def test_stack_checks_options_when_it_builds() -> None:
    inner = protected_backend().streamable_http_app()
    with pytest.raises(TypeError, match="ttll"):
        stack(inner, cache={"ttll": 5})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(TypeError, match="resource"):
        stack(inner, auth={"verifier": None})  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("options", "middleware"),
    [
        (mcp_middleware.AuthOptions, AuthMiddleware),
        (mcp_middleware.RateLimitOptions, RateLimitMiddleware),
        (mcp_middleware.CacheOptions, ResponseCacheMiddleware),
        (mcp_middleware.BreakerOptions, CircuitBreakerMiddleware),
        (mcp_middleware.TracingOptions, TracingMiddleware),
    ],
)
def test_every_constructor_option_can_be_given_to_stack(options: Any, middleware: Any) -> None:
    """The options types mirror the constructors (mypy checks the types; this checks nothing is missing)."""
    import inspect

    parameters = inspect.signature(middleware.__init__).parameters
    keywords = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    required = {name for name in keywords if parameters[name].default is inspect.Parameter.empty}
    assert set(options.__annotations__) == keywords
    assert set(options.__required_keys__) == required


async def test_a_rate_limiter_with_a_global_key_outside_auth_is_not_an_error(
    idp: Idp, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A global limit does not depend on who calls, so its place relative to auth is the operator's choice."""
    caplog.set_level(logging.ERROR, logger="mcp_middleware")
    app = protected_backend().streamable_http_app()
    app.add_middleware(AuthMiddleware, **auth_options(idp))
    app.add_middleware(
        RateLimitMiddleware, policies=[BucketPolicy("server", rate=100.0, capacity=100.0, key=global_key)]
    )
    served = serve(app)
    assert (await list_tools(served.mcp_url, idp.token("alice"))).status_code == 200
    assert errors_of(caplog, "mcp_middleware.ratelimit") == []


async def test_a_per_caller_limit_outside_auth_merges_callers_and_says_so_once(
    idp: Idp, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="mcp_middleware")
    app = protected_backend().streamable_http_app()
    app.add_middleware(AuthMiddleware, **auth_options(idp))
    app.add_middleware(RateLimitMiddleware, policies=[BucketPolicy("per-user", rate=0.01, capacity=2.0)])
    served = serve(app)
    alice, bob = idp.token("alice"), idp.token("bob")
    assert [(await list_tools(served.mcp_url, alice, i)).status_code for i in range(2)] == [200, 200]
    # Keyed on the address (auth had not run yet): bob pays for alice's requests. That is what the error says.
    assert (await list_tools(served.mcp_url, bob, 3)).status_code == 429
    (error,) = errors_of(caplog, "mcp_middleware.ratelimit")
    assert "RateLimitMiddleware runs OUTSIDE authentication" in error


async def test_a_cache_in_front_of_the_sdk_answers_no_dns_rebound_request(serve: Any) -> None:
    """The same trap one layer down: the SDK checks Host and Origin (DNS rebinding) inside the app, so a
    cache in front of it must not answer a rebound browser request from what a genuine client stored.

    A page on attacker.example that rebinds its name to 127.0.0.1 makes the victim's browser send
    `Host: attacker.example:…` and, with every POST, `Origin: http://attacker.example:…`; the SDK
    refuses it (421 for the Host, 403 for the Origin). The cache keys on the Origin, so the rebound
    request is a miss, goes to the SDK, and is refused.
    """
    served = serve(stack(protected_backend(list_scope="public").streamable_http_app(), cache=True))
    genuine = await list_tools(served.mcp_url, None, 1)
    assert (genuine.status_code, genuine.headers["x-mcp-cache"]) == (200, "miss")
    assert (await list_tools(served.mcp_url, None, 2)).headers["x-mcp-cache"] == "hit"
    port = served.base.rsplit(":", 1)[1]
    for rebound in (
        [("host", f"attacker.example:{port}"), ("origin", f"http://attacker.example:{port}")],
        [("origin", f"http://attacker.example:{port}")],
    ):
        response = await post_mcp(served.mcp_url, method="tools/list", params={}, request_id=3, extra_headers=rebound)
        assert response.status_code in (421, 403), (rebound, response.status_code)
        assert response.headers.get("x-mcp-cache") != "hit"
        assert b"admin_reset" not in response.content
    # A page the server does allow (its own origin) is served from the cache once it has asked.
    own = [("origin", f"http://127.0.0.1:{port}")]
    answers = [
        await post_mcp(served.mcp_url, method="tools/list", params={}, request_id=n, extra_headers=own) for n in (4, 5)
    ]
    assert [a.headers["x-mcp-cache"] for a in answers] == ["miss", "hit"]

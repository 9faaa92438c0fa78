"""Stacked middlewares of ours enter each other without a coroutine each (`core/direct.py`).

The direct entry is a shortcut of `__call__`, so what a client sees must not move: each test
below runs the whole stack (`stack()`: tracing API only → auth → rate limit → cache → breaker →
the SDK server, under uvicorn, real tokens signed by a local JWKS host) and asserts on what a
client gets — results, refusals with their ids and codes, cache hits, timeouts, the principal a
tool sees — including the paths the shortcut hands back to `__call__` (a second principal, a
cached token presented in forbidden ways, a subclass that overrides `__call__`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware import (
    AuthMiddleware,
    BucketPolicy,
    CircuitBreakerMiddleware,
    RateLimitMiddleware,
    ResponseCacheMiddleware,
    stack,
)
from mcp_middleware.core import ErrorCode
from mcp_middleware.core.direct import inner_app
from mcp_middleware.ratelimit import global_key
from tests.auth.conftest import post_mcp
from tests.conftest import ERAS, Era, connect
from tests.security.idp import RESOURCE, Idp, serve_idp
from tests.support.requests import legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    with serve_idp() as served:
        yield served


def backend() -> MCPServer:
    server = MCPServer("direct", cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="private")})

    @server.tool()
    def whoami() -> str:
        """The subject of the caller's token, as the SDK hands it to a tool."""
        token = get_access_token()
        return token.client_id if token is not None else "nobody"

    @server.tool()
    async def hang() -> str:
        """Never answers in time."""
        await asyncio.sleep(30)
        return "late"

    return server


def full_stack(idp: Idp, *, capacity: float = 1000.0) -> ASGIApp:
    return stack(
        backend().streamable_http_app(),
        tracing=True,
        auth={"verifier": idp.verifier(), "resource": RESOURCE, "required_scopes": ["mcp:read"]},
        ratelimit={"policies": [BucketPolicy("per-caller", rate=0.001, capacity=capacity)]},
        cache={"ttl": 60},
        breaker={"timeouts": {"*": 30.0, "tools/call:hang": 0.5}},
    )


def test_our_middlewares_are_entered_directly_and_nothing_else_is() -> None:
    app = backend().streamable_http_app()
    for middleware in (
        RateLimitMiddleware(app, policies=[BucketPolicy("all", rate=1, capacity=1)]),
        ResponseCacheMiddleware(app),
        CircuitBreakerMiddleware(app),
    ):
        assert inner_app(middleware) == middleware.mcp_direct
    assert inner_app(app) is app


def test_a_subclass_that_overrides_call_and_a_delegating_wrapper_are_entered_by_their_call() -> None:
    class Counting(RateLimitMiddleware):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await super().__call__(scope, receive, send)

    class Delegating:
        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.inner(scope, receive, send)

    app = backend().streamable_http_app()
    counting = Counting(app, policies=[BucketPolicy("all", rate=1, capacity=1)])
    assert inner_app(counting) is counting
    wrapper = Delegating(ResponseCacheMiddleware(app))
    assert inner_app(wrapper) is wrapper


async def test_a_subclass_that_overrides_call_still_sees_every_request(idp: Idp, serve: Any) -> None:
    seen: list[str] = []

    class Counting(RateLimitMiddleware):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(scope["method"])
            await super().__call__(scope, receive, send)

    app = CircuitBreakerMiddleware(backend().streamable_http_app())
    app = ResponseCacheMiddleware(Counting(app, policies=[BucketPolicy("all", rate=0.001, capacity=1000)]))
    served = serve(AuthMiddleware(app, verifier=idp.verifier(), resource=RESOURCE))
    answer = await post_mcp(
        served.mcp_url,
        authorization=f"Bearer {idp.token('alice')}",
        params={"name": "whoami", "arguments": {}},
    )
    assert answer.status_code == 200, answer.text
    assert json_of(answer)["result"]["content"][0]["text"] == "alice-cli"
    assert seen == ["POST"]


@pytest.mark.parametrize("era", ERAS)
async def test_the_stack_answers_as_before_in_both_eras(era: Era, idp: Idp, serve: Any) -> None:
    served = serve(full_stack(idp))
    for subject in ("alice", "bob", "alice"):  # a second principal after the first's token is cached
        headers = {"authorization": f"Bearer {idp.token(subject)}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            connect(streamable_http_client(served.mcp_url, http_client=http), era) as client,  # type: ignore[arg-type]
        ):
            result = await client.call_tool("whoami", {})
            assert result.content[0].text == f"{subject}-cli"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as timed_out:
                await client.call_tool("hang", {})
            assert timed_out.value.error.code == ErrorCode.TIMEOUT


async def test_refusals_through_the_stack_carry_the_request_id(idp: Idp, serve: Any) -> None:
    served = serve(full_stack(idp, capacity=2))
    alice = f"Bearer {idp.token('alice')}"
    lists = [
        await post_mcp(served.mcp_url, authorization=alice, method="tools/list", params={}, request_id=n)
        for n in (1, 2)
    ]
    assert [answer.status_code for answer in lists] == [200, 200]
    assert [answer.headers.get("x-mcp-cache") for answer in lists] == ["miss", "hit"]
    assert [json_of(answer)["id"] for answer in lists] == [1, 2]

    refused = await post_mcp(served.mcp_url, authorization=alice, params={"name": "whoami", "arguments": {}})
    assert refused.status_code == 429
    error = orjson.loads(refused.content)
    assert error["id"] == 7 and error["error"]["code"] == ErrorCode.RATE_LIMITED

    # bob has a budget of his own, and alice's cached list is not his.
    bob = f"Bearer {idp.token('bob')}"
    mine = await post_mcp(served.mcp_url, authorization=bob, method="tools/list", params={}, request_id=3)
    assert mine.status_code == 200 and mine.headers.get("x-mcp-cache") == "miss"


async def test_a_cached_token_presented_the_wrong_way_is_refused(idp: Idp, serve: Any) -> None:
    served = serve(full_stack(idp))
    token = idp.token("alice")
    call = {"name": "whoami", "arguments": {}}
    first = await post_mcp(served.mcp_url, authorization=f"Bearer {token}", params=call)
    assert first.status_code == 200  # verified, and now in auth's token cache

    twice = await post_mcp(
        served.mcp_url, authorization=f"Bearer {token}", params=call, extra_headers=[("authorization", "Bearer x")]
    )
    assert twice.status_code == 400 and orjson.loads(twice.content)["id"] == 7
    basic = await post_mcp(served.mcp_url, authorization=f"Basic {token}", params=call, request_id=8)
    assert basic.status_code == 401 and orjson.loads(basic.content)["id"] == 8
    async with httpx2.AsyncClient(timeout=10) as http:
        in_query = await http.post(
            f"{served.mcp_url}?access_token={token}",
            content=first.request.content,
            headers=dict(first.request.headers),
        )
    assert in_query.status_code == 400
    anonymous = await post_mcp(served.mcp_url, params=call, request_id=9)
    assert anonymous.status_code == 401 and orjson.loads(anonymous.content)["id"] == 9


async def test_a_legacy_session_through_the_stack(idp: Idp, serve: Any) -> None:
    app = stack(
        backend().streamable_http_app(),
        auth={"verifier": idp.verifier(), "resource": RESOURCE},
        ratelimit={"policies": [BucketPolicy("everyone", rate=0.001, capacity=3, key=global_key)]},
        cache={"ttl": 60},
        breaker=True,
    )
    served = serve(app)
    alice = {"authorization": f"Bearer {idp.token('alice')}"}
    async with httpx2.AsyncClient(headers=alice, timeout=10) as http:
        session = await legacy_session(http, served.mcp_url)  # initialize: one token; the notification: none
        answers = [await legacy_post(http, served.mcp_url, session, "tools/list", n) for n in (1, 2, 3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert [answer.headers.get("x-mcp-cache") for answer in answers[:2]] == ["miss", "hit"]
    assert orjson.loads(answers[2].content)["id"] == 3

"""Middleware order is a trap (issue 15, item 7): a cache or rate limiter outside auth must not leak or merge.

Starlette makes the LAST middleware added the OUTERMOST. Typed in the README's "outermost first"
order, `add_middleware` puts the cache outside auth: it decides hit or miss before anyone has
checked a token. The attack: alice lists her (private, filtered) tools; then a caller with no
token asks the same question and must not get alice's answer from the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from mcp_middleware import (
    AuthMiddleware,
    BucketPolicy,
    CircuitBreakerMiddleware,
    RateLimitMiddleware,
    ResponseCacheMiddleware,
    TracingMiddleware,
)
from tests.auth.conftest import post_mcp
from tests.security.idp import RESOURCE, Idp, protected_backend, serve_idp

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    with serve_idp() as served:
        yield served


def auth_options(idp: Idp) -> dict[str, Any]:
    return {
        "verifier": idp.verifier(),
        "resource": RESOURCE,
        "required_scopes": ["mcp:read"],
        "scopes": {"tools/call:admin_*": ["admin"]},
        "filter_lists": True,
    }


def readme_order_app(idp: Idp) -> Any:
    """The stack typed in the order the README listed it, "outermost first", one add_middleware per line."""
    app = protected_backend().streamable_http_app()
    app.add_middleware(TracingMiddleware)
    app.add_middleware(AuthMiddleware, **auth_options(idp))
    app.add_middleware(RateLimitMiddleware, policies=[BucketPolicy(name="per-user", rate=100.0, capacity=100.0)])
    app.add_middleware(ResponseCacheMiddleware)
    app.add_middleware(CircuitBreakerMiddleware)
    return app  # Starlette runs it as: breaker → cache → rate limit → auth → tracing → app


def tool_names(response: Any) -> list[str]:
    body = orjson.loads(response.content)
    return [tool["name"] for tool in body["result"]["tools"]]


async def list_tools(url: str, token: str | None, request_id: int = 7) -> Any:
    authorization = f"Bearer {token}" if token is not None else None
    return await post_mcp(url, authorization=authorization, method="tools/list", params={}, request_id=request_id)


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
    cache_errors = [r for r in caplog.records if r.name == "mcp_middleware.cache" and r.levelno == logging.ERROR]
    limit_errors = [r for r in caplog.records if r.name == "mcp_middleware.ratelimit" and r.levelno == logging.ERROR]
    assert len(cache_errors) == 1, caplog.text
    assert "add it BEFORE AuthMiddleware" in cache_errors[0].getMessage()
    assert "mcp_middleware.stack" in cache_errors[0].getMessage()
    assert len(limit_errors) == 1, caplog.text
    assert "add it BEFORE AuthMiddleware" in limit_errors[0].getMessage()

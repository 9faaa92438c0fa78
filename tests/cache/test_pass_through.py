"""The cache's pass-through (`ResponseCacheMiddleware.mcp_direct`) does what `_dispatch`, the exact path, does.

`mcp_direct` sends a request on at once when its method is one the cache never handles, whatever its kind,
and hands everything else (a handled method, or a view with no method: a GET stream, a DELETE, a response) to
`_dispatch`. The views here are made by the core's own parser from real bodies and headers, in both eras, for
every kind of message; each goes through both entries of caches with and without opt-in rules, and the two
must pick the same thing to await: the next layer's call, or the same coroutine of the cache's own.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson
import pytest
from mcp_types.methods import CACHEABLE_METHODS
from starlette.types import Receive, Scope, Send

from mcp_middleware.cache import ResponseCacheMiddleware
from mcp_middleware.core import McpRequest
from mcp_middleware.core.headers import RequestHeaders
from mcp_middleware.core.parsing import describe_exchange, parse_post
from mcp_middleware.core.request import REQUEST_SCOPE_KEY
from tests.support.requests import legacy_body, legacy_headers, modern_body, modern_headers

_METHODS = sorted(
    {
        *CACHEABLE_METHODS,
        "tools/call",
        "prompts/get",
        "initialize",
        "subscriptions/listen",
        "ping",
        "completion/complete",
        "no/such/method",
    }
)


class _Next:
    """The next layer: what calling it returns names the call (nothing to await here)."""

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        return ("next", id(scope))


def _raw(headers: dict[str, str]) -> RequestHeaders:
    return RequestHeaders([(k.encode(), v.encode()) for k, v in headers.items()])


def _views() -> list[McpRequest | None]:
    views: list[McpRequest | None] = [None]
    for method in _METHODS:
        params = {"name": "echo", "arguments": {}} if method in ("tools/call", "prompts/get") else {}
        bodies = [
            (modern_body(method, params, 7), modern_headers(method, params.get("name"))),
            (legacy_body(method, params, 7), legacy_headers("s-1")),
            (orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params}), legacy_headers("s-1")),
        ]
        for body, headers in bodies:
            view = parse_post(body, _raw(headers))
            if isinstance(view, McpRequest):
                views.append(view)
    for response in ({"jsonrpc": "2.0", "id": 3, "result": {}}, {"jsonrpc": "2.0", "id": 3, "error": {"code": 1}}):
        view = parse_post(orjson.dumps(response), _raw(legacy_headers("s-1")))
        assert isinstance(view, McpRequest)
        views.append(view)
    for http_method in ("GET", "DELETE", "OPTIONS", "PUT"):
        views.append(describe_exchange(http_method, _raw(legacy_headers("s-1"))))
    return views


def _what(awaitable: Awaitable[None] | Any) -> Any:
    """What an entry chose to await: the next layer's call, or a coroutine of the cache's (closed here)."""
    if isinstance(awaitable, tuple):
        return awaitable
    code = awaitable.cr_code.co_qualname
    awaitable.close()
    return code


@pytest.mark.parametrize(
    "options",
    [{}, {"rules": {"tools/call:echo": 30, "prompts/get": 30}}, {"rules": {"tools/call:echo": 30}, "ttl": 0}],
    ids=["defaults", "opt-in", "opt-in-no-ttl"],
)
def test_the_pass_through_picks_what_dispatch_picks(options: dict[str, Any]) -> None:
    cache = ResponseCacheMiddleware(_Next(), **options)
    views = _views()
    kinds = {view.kind for view in views if view is not None}
    assert len(kinds) == 6 and len(views) > 3 * len(_METHODS)  # every kind of view, every method
    passed = 0
    for view in views:
        scope: Scope = {"type": "http", "path": "/mcp", "headers": [], REQUEST_SCOPE_KEY: view}
        receive: Any = None
        send: Any = None
        direct = _what(cache.mcp_direct(scope, receive, send))
        exact = ("next", id(scope)) if view is None else _what(cache._dispatch(view, scope, receive, send))
        assert direct == exact, view
        passed += direct == ("next", id(scope))
    assert 0 < passed < len(views)  # both ways are taken


def test_views_that_are_not_requests_or_notifications_carry_no_method() -> None:
    """What the pass-through relies on: only a JSON-RPC request or notification has a method."""
    for view in _views():
        if view is not None and view.method is not None:
            assert view.kind.name in ("REQUEST", "NOTIFICATION"), view


def test_a_request_no_layer_read_is_entered_by_call() -> None:
    """No view in the scope (no layer of ours read the request): the direct entry is `__call__`, which reads it."""
    cache = ResponseCacheMiddleware(_Next())
    scope: Scope = {"type": "http", "path": "/mcp", "headers": []}
    receive: Any = None
    send: Any = None
    assert _what(cache.mcp_direct(scope, receive, send)) == "ResponseCacheMiddleware.__call__"

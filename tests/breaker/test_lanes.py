"""The breaker's lanes: `(method, target, path)` → route, backend and breaker, looked up once per request.

A lane must give exactly what `registry.get` would: the registry's own breaker for the key (never one it has
forgotten), made the most recently used each time (so a busy backend is never the one forgotten), on both
paths; and a `key` function (the gateway's) takes no lane.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.breaker import BreakerRegistry, CircuitBreakerMiddleware
from mcp_middleware.core.kernel import EVERY_PATH
from tests.support.requests import modern_body, modern_headers

from .backends import post_scope, scripted_receive
from .test_watch import OK, REQUEST_ID, response


async def _answers(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    for message in response(200, b"application/json", [OK]):
        await send(message)


def _requests(app: CircuitBreakerMiddleware, paths: list[str]) -> None:
    async def run() -> None:
        for path in paths:
            body = modern_body("tools/call", {"name": "t", "arguments": {}}, REQUEST_ID)
            scope = post_scope(body, modern_headers("tools/call", "t")) | {"path": path, "raw_path": path.encode()}
            receive = scripted_receive([{"type": "http.request", "body": body, "more_body": False}])

            async def send(message: Message) -> None:
                pass

            await app(scope, receive, send)

    asyncio.run(run())


def _counts(registry: BreakerRegistry) -> dict[str, int]:
    return {key: snapshot.window_calls for key, snapshot in registry.snapshot().items()}


@pytest.mark.parametrize("fast", [True, False])
def test_a_forgotten_breaker_is_never_counted_into_and_a_busy_one_is_never_forgotten(fast: bool) -> None:
    registry = BreakerRegistry(max_breakers=2)
    app = CircuitBreakerMiddleware(_answers, registry=registry, config=EVERY_PATH)
    app.fast_path = fast
    _requests(app, ["/a", "/a", "/b", "/a", "/c"])  # /a used last before /c: /b is the one forgotten
    assert _counts(registry) == {"/a": 3, "/c": 1}
    _requests(app, ["/b", "/d"])  # /a forgotten now (then /c): its lane must not count into the old breaker
    assert _counts(registry) == {"/b": 1, "/d": 1}
    _requests(app, ["/a"])
    assert _counts(registry) == {"/d": 1, "/a": 1}  # a breaker of its own again, made by the registry
    assert registry.evictions == 4


def test_lanes_are_bounded_and_a_key_function_takes_none() -> None:
    app = CircuitBreakerMiddleware(_answers, config=EVERY_PATH)
    _requests(app, [f"/p{i}" for i in range(5)] + ["/p0"])
    assert len(app._lanes) == 5 and _counts(app.registry)["/p0"] == 2
    keyed = CircuitBreakerMiddleware(_answers, config=EVERY_PATH, key=lambda scope, request: "one")
    _requests(keyed, ["/x", "/y"])
    assert keyed._lanes == {} and _counts(keyed.registry) == {"one": 2}


def test_the_lanes_answer_what_the_registry_answers_for_per_target_breakers() -> None:
    app: Any = CircuitBreakerMiddleware(_answers, config=EVERY_PATH, per_target=["tools/call:t"])
    _requests(app, ["/a", "/a", "/b"])
    assert _counts(app.registry) == {"/a tools/call:t": 2, "/b tools/call:t": 1}


@pytest.mark.parametrize("fast", [True, False])
def test_a_lane_is_not_used_once_another_middleware_made_the_shared_registry_forget_its_breaker(fast: bool) -> None:
    """The gateway shares one registry between a mount's middlewares: a breaker forgotten and made anew
    through one of them is the one the other counts into afterwards."""
    registry = BreakerRegistry(max_breakers=2)
    first = CircuitBreakerMiddleware(_answers, registry=registry, config=EVERY_PATH)
    second = CircuitBreakerMiddleware(_answers, registry=registry, config=EVERY_PATH)
    first.fast_path = second.fast_path = fast
    _requests(first, ["/a", "/a"])  # `first` has a lane for /a
    _requests(second, ["/b", "/c", "/a"])  # /a forgotten, then made anew (and /b forgotten)
    _requests(first, ["/a"])
    assert _counts(registry) == {"/c": 1, "/a": 2}  # the new /a: `second`'s call and `first`'s


def _call(app: Any, tool: str) -> list[Message]:
    """One `tools/call` of `tool` to `/mcp`: what the client got."""
    sent: list[Message] = []

    async def run() -> None:
        body = modern_body("tools/call", {"name": tool, "arguments": {}}, REQUEST_ID)
        receive = scripted_receive([{"type": "http.request", "body": body, "more_body": False}])

        async def send(message: Message) -> None:
            sent.append(message)

        await app(post_scope(body, modern_headers("tools/call", tool)), receive, send)

    asyncio.run(run())
    return sent


async def _slow_for_slow(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    if (b"mcp-name", b"slow") in scope["headers"]:
        await asyncio.sleep(5)
    for message in response(200, b"application/json", [OK]):
        await send(message)


@pytest.mark.parametrize("fast", [True, False])
def test_a_selector_naming_a_tool_keeps_the_tool_in_the_lane(fast: bool) -> None:
    """A per-tool timeout: each tool its own lane (its own route), whichever tool came first."""
    app = CircuitBreakerMiddleware(_slow_for_slow, timeouts={"*": 30.0, "tools/call:slow": 0.05})
    app.fast_path = fast
    assert app._by_target
    assert _call(app, "quick")[0]["status"] == 200
    assert _call(app, "slow")[0]["status"] == 504  # not the lane `quick` left (its route has no such timeout)
    assert _call(app, "quick")[0]["status"] == 200
    assert {key[1] for key in app._lanes} == {"quick", "slow"}


def test_without_such_a_selector_one_lane_serves_every_tool() -> None:
    app = CircuitBreakerMiddleware(_answers)
    assert not app._by_target  # the defaults name methods only
    for tool in ("a", "b", "c"):
        assert _call(app, tool)[0]["status"] == 200
    assert list(app._lanes) == [("tools/call", None, "/mcp")]
    assert CircuitBreakerMiddleware(_answers, per_target=["tools/call"])._by_target  # breakers per tool
    assert CircuitBreakerMiddleware(_answers, exclude=["tools/call:stream_*"])._by_target
